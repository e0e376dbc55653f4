#!/usr/bin/env bash
# Debian tools the tests use: dciodvfy (dicom3tools) validates every DICOM object we write, dcmdump
# (dcmtk) for inspection, pdftoppm (poppler-utils) renders the PDF report, Orthanc with its DICOMweb plugin
# is the PACS of the round-trip test. Installed only when missing.
set -euo pipefail
need=()
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v dcmdump >/dev/null 2>&1 || need+=(dcmtk)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 || need+=(orthanc-dicomweb)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root or install them; tests needing them are skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${need[@]}" >/dev/null
# the orthanc package enables a system service; the tests start their own Orthanc on free loopback ports
if [[ " ${need[*]} " == *" orthanc "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now orthanc >/dev/null 2>&1 || true
fi
