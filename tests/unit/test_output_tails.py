"""The output-file tails a batch poll reads within its one command, run by a real bash on real
files: any byte a call prints survives, the bytes read per poll are bounded, and the rest is
read from where the last read stopped."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from remote_futures.errors import ConfigurationError
from remote_futures.output import LineSplitter, OutputForwarder
from remote_futures.transports._tails import TailTarget, split_tails, tail_command


def run(command: str) -> str:
    listing = "call-0.out\ntask-0.exit:0\n"
    full = f"printf '%s' {shlex.quote(listing)}; {command}"
    return subprocess.run(["bash", "-c", full], capture_output=True, check=True).stdout.decode()


def test_tails_carry_any_bytes_and_leave_the_listing_alone(tmp_path: Path) -> None:
    hostile = b"@@remote_futures-tail@@ 0 AAAA\n\x00\xff\xfe task-1.stdout\ncall-3.out\n"
    out = tmp_path / "task-0.stdout"
    out.write_bytes(b"old" + hostile)
    missing = tmp_path / "task-9.stdout"
    listing, tails = split_tails(run(tail_command(
        [TailTarget(str(out), 3), TailTarget(str(missing), 0)])))
    assert listing == "call-0.out\ntask-0.exit:0\n"
    assert tails[0] == hostile
    assert tails.get(1, b"") == b""


def test_reads_are_bounded_and_resume_where_they_stopped(tmp_path: Path) -> None:
    files = [tmp_path / f"task-{i}.stdout" for i in range(2)]
    data = [bytes(range(256)) * 100, b"x" * 50_000]  # 25600 and 50000 bytes
    for path, content in zip(files, data, strict=True):
        path.write_bytes(content)
    got = [b"", b""]
    for _ in range(20):
        targets = [TailTarget(str(p), len(g)) for p, g in zip(files, got, strict=True)]
        _, tails = split_tails(run(tail_command(targets, budget=16384)))
        assert all(len(chunk) <= 8192 for chunk in tails.values())
        for i, chunk in tails.items():
            got[i] += chunk
    assert got == data


def test_line_splitter_holds_unfinished_lines_within_a_bound() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"ab") == b""
    assert splitter.feed(b"c\nde") == b"abc\n"
    assert splitter.feed(b"fghijklmn") == b"defghijklmn"  # longer than a line may be
    assert splitter.feed(b"z") == b""
    assert splitter.rest() == b"z"
    assert splitter.rest() == b""


def test_forwarder_tags_each_line_and_ends_a_tagged_piece(
    capfd: pytest.CaptureFixture[str],
) -> None:
    OutputForwarder("live", "[{job}.{call}] ").forward(1, "77", 3, b"a\nb")
    OutputForwarder("live", "[{job}.{call}] ").forward(2, "77", "0-4", "c\n")
    OutputForwarder("live", "").forward(1, "77", 3, b"untagged")
    OutputForwarder("off", "").forward(1, "77", 3, b"dropped\n")
    out, err = capfd.readouterr()
    assert out == "[77.3] a\n[77.3] b\nuntagged"
    assert err == "[77.0-4] c\n"


@pytest.mark.parametrize(("mode", "prefix"), [("loud", ""), ("live", "{task}"), ("live", "{")])
def test_forwarder_refuses_bad_settings(mode: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError):
        OutputForwarder(mode, prefix)
