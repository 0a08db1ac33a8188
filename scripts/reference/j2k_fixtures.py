#!/usr/bin/env python3
"""JPEG 2000 DICOM fixtures for crates/cxr-image/tests/dicom_variants.rs.

dicom-rs decodes JPEG 2000 (openjp2) but has no encoder, so the J2K variants are written once here
and committed (a few KB). Each comes with a native (explicit VR little endian) twin holding the
same stored values; the test decodes both and requires identical pixels.

    python3 -m venv venv && venv/bin/pip install pydicom==3.0.2 pylibjpeg==2.1.0 \
        pylibjpeg-openjpeg==2.6.0 numpy==2.4.6
    venv/bin/python scripts/reference/j2k_fixtures.py
"""
import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless,
                         DigitalXRayImageStorageForPresentation, generate_uid)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-image", "tests", "fixtures")


def dataset(arr, bits, photometric):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(bits), photometric])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "PHANTOM^J2K"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    top = (1 << bits) - 1
    ds.WindowCenter = (top + 1) / 2
    ds.WindowWidth = top + 1
    ds.PixelData = arr.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    return ds


def main():
    os.makedirs(OUT, exist_ok=True)
    y, x = np.mgrid[0:45, 0:67]
    base = 0.6 * x / 66 + 0.4 * y / 44
    base[(x - 20) ** 2 + (y - 15) ** 2 < 81] = 0.9
    for bits, photometric in [(12, "MONOCHROME2"), (8, "MONOCHROME1")]:
        arr = np.round(base * ((1 << bits) - 1))
        native = dataset(arr, bits, photometric)
        native.save_as(os.path.join(OUT, f"native_{bits}bit.dcm"), enforce_file_format=True)
        j2k = dataset(arr, bits, photometric)
        j2k.compress(JPEG2000Lossless, arr.astype(j2k.pixel_array.dtype), encoding_plugin="pylibjpeg")
        j2k.save_as(os.path.join(OUT, f"j2k_lossless_{bits}bit.dcm"), enforce_file_format=True)
    print("wrote J2K fixtures to", OUT)


if __name__ == "__main__":
    main()
