#!/usr/bin/env python3
"""Writes the hand-made .npy files under bad_npy/ (committed; rerun to refresh).

Plain Python (no numpy): every byte is laid out here so each file is broken in
exactly one way. EXPECT lists file, expected exit status and a substring the
error message must contain."""
import os
import struct
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_npy")
MAGIC = b"\x93NUMPY"


def header(d, version=1, pad=True):
    h = d.encode("latin1") if isinstance(d, str) else d
    if pad:
        pre = 10 if version == 1 else 12
        total = pre + len(h) + 1
        h = h + b" " * ((64 - total % 64) % 64) + b"\n"
    if version == 1:
        return MAGIC + bytes([1, 0]) + struct.pack("<H", len(h)) + h
    return MAGIC + bytes([version, 0]) + struct.pack("<I", len(h)) + h


def dict_(descr="'<f4'", fortran="False", shape="(1, 2, 8, 4)"):
    return "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)


def f32(n, start=0.0):
    return struct.pack("<%df" % n, *[start + 0.01 * i for i in range(n)])


files = {}  # name -> (bytes, exit status, message substring)
good = header(dict_()) + f32(64)
files["good_q.npy"] = (good, 0, "")
files["good_k_d5.npy"] = (header(dict_(shape="(1, 2, 8, 5)")) + f32(80), 1, "head dim")

files["empty.npy"] = (b"", 3, "bad magic")
files["text_file.npy"] = (b"hello, this is not numpy\n", 3, "bad magic")
files["bad_magic.npy"] = (b"\x93NUMPX" + good[6:], 3, "bad magic")
files["magic_only.npy"] = (MAGIC, 3, "truncated")
files["no_header_len.npy"] = (MAGIC + b"\x01\x00\x20", 3, "truncated")
files["bad_version.npy"] = (MAGIC + b"\x09\x00" + good[8:], 3, "version 9.0")
files["header_len_past_eof.npy"] = (MAGIC + b"\x01\x00" + struct.pack("<H", 60000) + good[10:200],
                                    3, "runs past the end")
files["header_cut.npy"] = (good[:40], 3, "runs past the end")
files["v2_header_len_huge.npy"] = (MAGIC + b"\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{}",
                                   3, "runs past the end")
files["not_a_dict.npy"] = (header("[1, 2, 3]") + f32(4), 3, "bad header dict")
files["unterminated_dict.npy"] = (header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 8, 4), ")
                                  + f32(64), 3, "bad header dict")
files["unterminated_string.npy"] = (header("{'descr': '<f4, 'fortran_order': False}"), 3,
                                    "bad header dict")
files["missing_shape.npy"] = (header("{'descr': '<f4', 'fortran_order': False}") + f32(64), 3,
                              "missing key 'shape'")
files["unknown_key.npy"] = (header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 8, 4), 'x': 1}")
                            + f32(64), 3, "unexpected key 'x'")
files["duplicate_key.npy"] = (header("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 8, 4)}")
                              + f32(64), 3, "appears twice")
files["bad_shape_value.npy"] = (header(dict_(shape="(1, x, 8, 4)")) + f32(64), 3, "expected an integer")
files["negative_dim.npy"] = (header(dict_(shape="(1, -2, 8, 4)")) + f32(64), 3, "negative")
files["shape_overflow.npy"] = (header(dict_(shape="(4294967296, 4294967296, 16)")) + f32(64), 3,
                               "overflow")
files["shape_bytes_overflow.npy"] = (header(dict_(shape="(2305843009213693952, 2)")) + f32(64), 3,
                                     "overflow")
files["huge_dim.npy"] = (header(dict_(shape="(99999999999999999999, 1)")) + f32(64), 3,
                         "does not fit")
files["too_many_dims.npy"] = (header(dict_(shape="(1, 1, 1, 1, 1, 1, 1, 1, 1)")) + f32(1), 3,
                              "more than 8")
files["truncated_data.npy"] = (header(dict_()) + f32(32), 3, "truncated")
files["truncated_data_1byte.npy"] = (header(dict_()) + f32(64)[:-1], 3, "truncated")
files["fortran_order.npy"] = (header(dict_(fortran="True")) + f32(64), 3, "Fortran")
files["bad_bool.npy"] = (header(dict_(fortran="Maybe")) + f32(64), 3, "True or False")
files["int64.npy"] = (header(dict_(descr="'<i8'")) + b"\0" * 512, 3, "int64")
files["int32.npy"] = (header(dict_(descr="'<i4'")) + b"\0" * 256, 3, "int32")
files["float128.npy"] = (header(dict_(descr="'<f16'")) + b"\0" * 1024, 3, "float128")
files["complex64.npy"] = (header(dict_(descr="'<c8'")) + b"\0" * 512, 3, "complex64")
files["object.npy"] = (header(dict_(descr="'|O'")) + b"\0" * 512, 3, "object")
files["unicode.npy"] = (header(dict_(descr="'<U3'")) + b"\0" * 768, 3, "string")
files["structured.npy"] = (header(dict_(descr="[('a', '<f4'), ('b', '<f4')]")) + f32(128), 3,
                           "structured")
files["bool_as_data.npy"] = (header(dict_(descr="'|b1'")) + b"\1" * 64, 3, "dtype bool")
files["rank2_data.npy"] = (header(dict_(shape="(8, 4)")) + f32(32), 3, "rank 2")
files["rank5_data.npy"] = (header(dict_(shape="(1, 1, 2, 8, 4)")) + f32(64), 3, "rank 5")
files["zero_dim.npy"] = (header(dict_(shape="(1, 0, 8, 4)")), 3, "is 0")
files["garbage_after_dict.npy"] = (header(dict_() + " xyz") + f32(64), 3, "after the closing")
files["control_char_in_string.npy"] = (header("{'descr': '<f\x014', 'fortran_order': False, 'shape': (1, 2, 8, 4)}")
                                       + f32(64), 3, "unexpected character")
files["binary_header.npy"] = (header(bytes(range(1, 90))) + f32(64), 3, "bad header dict")


def main():
    os.makedirs(HERE, exist_ok=True)
    lines = ["# file<TAB>exit status<TAB>substring of the message (attn run --q FILE ...)"]
    for name, (data, status, msg) in sorted(files.items()):
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        if not name.startswith("good_q"):
            lines.append("%s\t%d\t%s" % (name, status, msg))
    with open(os.path.join(HERE, "EXPECT"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
