#!/usr/bin/env python3
"""Jane Austen's novels (Debian's r-cran-janeaustenr) -> one JSON document a chapter.

Reads the package's R lazy-load database (data/Rdata.rdb): a series of records, each a
4-byte big-endian length followed by a zlib stream holding an R XDR serialization
("X\\n", version 3) of a character vector (STRSXP) of the novel's lines. Chapters are
split at their "CHAPTER"/"Chapter" headings (the heading itself and any front matter
before the first one are dropped, as are Emma's "VOLUME" lines and the publisher's
note that ends Northanger Abbey); wrapped lines are
joined into paragraphs, paragraphs are separated by "\\n". Chapters are ordered by the
SHA-256 of "<seed>/<novel>/<chapter>", a fixed shuffle so that the val split (the first
documents) samples every novel. Standard library only.

usage: austen_docs.py RDATA.rdb ALL.jsonl TRAIN.jsonl VAL_PERCENT NOVEL...
prints the number of val documents (the first ones of ALL.jsonl; TRAIN.jsonl has the rest)
"""
import hashlib
import json
import re
import struct
import sys
import zlib

SEED = "pgolf-sample-1"
HEADING = re.compile(r"^(CHAPTER|Chapter) [0-9IVXLC]+\.?$")
VOLUME = re.compile(r"^VOLUME [IVX]+$")
EDITORIAL = "A NOTE ON THE TEXT"  # a modern publisher's note at the end of Northanger Abbey


def read_records(path):
    data = open(path, "rb").read()
    off = 0
    while off < len(data):
        (length,) = struct.unpack(">i", data[off:off + 4])
        z = zlib.decompressobj()
        raw = z.decompress(data[off + 4:])
        if len(raw) != length:
            sys.exit(f"{path}: record at {off} inflates to {len(raw)} bytes, header says {length}")
        off = len(data) - len(z.unused_data)
        yield raw


def parse_strsxp(raw):
    if raw[:2] != b"X\n":
        sys.exit("not an R XDR serialization")
    version, _, _, enc_len = struct.unpack(">iiii", raw[2:18])
    if version != 3:
        sys.exit(f"R serialization version {version}, expected 3")
    p = 18 + enc_len
    flags, n = struct.unpack(">ii", raw[p:p + 8])
    if flags & 0xFF != 16:
        sys.exit(f"R object type {flags & 0xFF}, expected a character vector (16)")
    p += 8
    lines = []
    for _ in range(n):
        flags, length = struct.unpack(">ii", raw[p:p + 8])
        p += 8
        if flags & 0xFF != 9:
            sys.exit(f"R element type {flags & 0xFF}, expected CHARSXP (9)")
        if length == -1:
            lines.append("")
            continue
        lines.append(raw[p:p + length].decode("utf-8"))
        p += length
    return lines


def chapters(lines):
    """Yields the text of each chapter: paragraphs joined by newlines."""
    bodies = []
    for line in lines:
        s = line.strip()
        if s == EDITORIAL:
            break
        if HEADING.match(s):
            bodies.append([])
        elif bodies and not VOLUME.match(s):
            bodies[-1].append(s)
    for body in bodies:
        paras = [" ".join(p.split()) for p in "\n".join(body).split("\n\n")]
        yield "\n".join(p for p in paras if p)


def main():
    rdb, all_path, train_path, val_percent, novels = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
    docs = []
    for raw in read_records(rdb):
        lines = parse_strsxp(raw)
        title = lines[0].strip().title()
        if title not in novels:
            continue
        for i, text in enumerate(chapters(lines), 1):
            key = hashlib.sha256(f"{SEED}/{title}/{i}".encode()).hexdigest()
            docs.append((key, {"novel": title, "chapter": i, "text": text}))
    missing = set(novels) - {d["novel"] for _, d in docs}
    if missing:
        sys.exit(f"novels not found in {rdb}: {sorted(missing)}")
    docs.sort(key=lambda kd: kd[0])
    n_val = round(len(docs) * val_percent / 100)
    with open(all_path, "w") as fa, open(train_path, "w") as ft:
        for i, (_, d) in enumerate(docs):
            line = json.dumps(d) + "\n"
            fa.write(line)
            if i >= n_val:
                ft.write(line)
    print(n_val)


if __name__ == "__main__":
    main()
