"""Prints one top-level section ("## ...") of the previous docs/BENCHMARKS.md, for a
`make bench` step that was not rerun (bench/run.sh with ONLY=...), with a line that
says which run its figures came from. A section kept before keeps its first note.
Usage: keep_section.py PREVIOUS_REPORT "## Heading prefix"
"""
import re
import sys

path, prefix = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        text = f.read()
except OSError:
    text = ""
m = re.search(r"Written by `make bench` (\(.*?\) )?on (\S+?);", text)
date = (m.group(2) + (f" {m.group(1).strip()}" if m.group(1) else "")) if m else "an earlier run"
parts = re.split(r"(?m)^(?=## )", text)
section = next((p for p in parts if p.startswith(prefix)), None)
if section is None:
    print(f"{prefix}\n\nNot rerun by this run, and not found in the previous report.")
    sys.exit(0)
head, _, body = section.rstrip("\n").partition("\n")
note = "_Kept from the `make bench` run of"
if note not in body:
    body = f"\n{note} {date}: this step was not rerun by the run above._\n" + body
print(head + "\n" + body)
