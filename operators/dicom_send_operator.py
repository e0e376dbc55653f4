"""Operator: send the written DICOM outputs to a PACS / DICOM node (C-STORE or STOW-RS)."""

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dynamic_pet.dicom_send import parse_destination, send_files

log = logging.getLogger(__name__)


class DicomSendOperator(Operator):
    """Receives ``outputs`` (paths of the written DICOM files) and sends them to ``destination``
    (``dicom://CALLED_AET@host:port[?calling=AET]`` or an ``http(s)://.../dicom-web`` base URL).

    The outputs are already written when they arrive; a failed send raises :class:`SendError` after the
    retries and leaves them in place."""

    def __init__(self, fragment: Fragment, *args, destination, retries=3, **kwargs):
        self.destination = parse_destination(destination)  # refuse a malformed destination at build time
        self.retries = int(retries)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("outputs")

    def compute(self, op_input, op_output, context):
        files = op_input.receive("outputs")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # per-message INFO lines are noise here
        report = send_files(files, self.destination, retries=self.retries)
        log.info("sent %d DICOM files to %s by %s in %.1f s (%d attempt(s))", report.files, report.destination,
                 report.protocol.upper(), report.seconds, report.attempts)
