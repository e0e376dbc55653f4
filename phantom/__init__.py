"""Digital total-body phantom and dynamic FDG PET simulator (framework-free: numpy, scipy, torch).

``anatomy`` builds a seed-randomised label volume, ``kinetics`` the FDG input function and per-voxel
two-tissue kinetics, ``scanner`` the projection / Poisson / OSEM chain, ``dicom_writer`` the dynamic PET
series, ``simulate`` ties them together, ``static_images`` gives static PET slices for training the prior.
"""
