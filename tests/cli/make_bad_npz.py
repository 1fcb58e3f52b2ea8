#!/usr/bin/env python3
"""Writes the hand-made .npz archives under bad_npz/ (committed; rerun to refresh).

Each archive is broken in exactly one way. Built with the standard library
(zipfile, struct) and make_bad_npy's .npy bytes; EXPECT lists file,
expected exit status and a substring the error message must contain
(`attn run --q FILE --k good --v good`)."""
import io
import os
import struct
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_bad_npy import dict_, f32, header  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_npz")
GOOD_NPY = header(dict_()) + f32(64)


def archive(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return bytearray(buf.getvalue())


def eocd_pos(b):
    return bytes(b).rindex(b"PK\x05\x06")


def cd_pos(b):
    return struct.unpack_from("<I", b, eocd_pos(b) + 16)[0]


def patch(b, off, fmt, value):
    struct.pack_into(fmt, b, off, value)
    return b


files = {}
good = archive([("q.npy", GOOD_NPY)])
files["good_q.npz"] = (good, 0, "")
files["good_q_deflated.npz"] = (archive([("q.npy", GOOD_NPY)], zipfile.ZIP_DEFLATED), 0, "")

files["empty.npz"] = (b"", 3, "too short")
files["text_file.npz"] = (b"this is not a zip archive, just some text\n", 3, "end-of-central-directory")
files["truncated.npz"] = (good[: len(good) // 2], 3, "end-of-central-directory")
files["no_members.npz"] = (archive([]), 3, "no members")
b = bytearray(good)
files["cd_past_eof.npz"] = (patch(b, eocd_pos(b) + 16, "<I", len(b) + 100), 3, "past the end")
b = bytearray(good)
files["multi_disk.npz"] = (patch(b, eocd_pos(b) + 4, "<H", 1), 3, "multi-disk")
b = bytearray(good)
files["zip64_no_locator.npz"] = (patch(b, eocd_pos(b) + 10, "<H", 0xFFFF), 3, "zip64")
b = bytearray(good)
files["cd_entry_bad_sig.npz"] = (patch(b, cd_pos(b), "<I", 0x12345678), 3,
                                 "central directory entry")
b = bytearray(good)
files["crc_mismatch.npz"] = (patch(b, len(b) - 22 - 46 - 5 - 1, "<B", 0x41), 3, "CRC-32")
b = bytearray(good)
files["method_bzip2.npz"] = (patch(b, cd_pos(b) + 10, "<H", 12), 3, "compression method 12")
b = bytearray(good)
files["encrypted.npz"] = (patch(b, cd_pos(b) + 8, "<H", 1), 3, "encrypted")
b = bytearray(good)
files["no_local_header.npz"] = (patch(b, cd_pos(b) + 42, "<I", 7), 3, "no local header")
b = bytearray(good)
patch(b, cd_pos(b) + 20, "<I", 1 << 30)
files["data_past_eof.npz"] = (patch(b, cd_pos(b) + 24, "<I", 1 << 30), 3, "runs past the end")
b = bytearray(good)
files["stored_size_mismatch.npz"] = (patch(b, cd_pos(b) + 24, "<I", 10), 3, "stored member")
d = archive([("q.npy", GOOD_NPY)], zipfile.ZIP_DEFLATED)
files["deflate_claims_too_much.npz"] = (patch(d, cd_pos(d) + 24, "<I", 0xF0000000), 3, "claims")
# deflated stream replaced by garbage of the same length (CRC and sizes kept)
d = archive([("q.npy", GOOD_NPY)], zipfile.ZIP_DEFLATED)
csize = struct.unpack_from("<I", d, cd_pos(d) + 20)[0]
start = 30 + len("q.npy")
d[start:start + csize] = bytes([0xFF]) * csize
files["deflate_garbage.npz"] = (d, 3, "corrupt deflated member")
files["member_not_npy.npz"] = (archive([("q.npy", b"not numpy at all")]), 3, "bad magic")
files["member_truncated_npy.npz"] = (archive([("q.npy", GOOD_NPY[:-8])]), 3, "truncated")
files["member_int64.npz"] = (archive([("q.npy", header(dict_(descr="'<i8'")) + b"\0" * 512)]), 3,
                             "int64")
files["two_members_no_q.npz"] = (archive([("a.npy", GOOD_NPY), ("b.npy", GOOD_NPY)]), 3,
                                 "no member 'q'")
files["duplicate_member.npz"] = (archive([("q.npy", GOOD_NPY), ("q.npy", GOOD_NPY)]), 3,
                                 "appears 2 times")

if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    with open(os.path.join(HERE, "EXPECT"), "w") as f:
        f.write("# file<TAB>exit status<TAB>substring of the message (attn run --q FILE ...)\n")
        for name in sorted(files):
            data, status, sub = files[name]
            with open(os.path.join(HERE, name), "wb") as g:
                g.write(bytes(data))
            if not name.startswith("good_"):
                f.write("%s\t%d\t%s\n" % (name, status, sub))
    print("wrote %d files to %s" % (len(files), HERE))
