"""Exit codes a script or CI job can tell apart (docs/guides/troubleshooting.md); abbreviations refused."""

import pytest

from conftest import TINY, run_harness



def harness(*args, cwd):
    p = run_harness(*args, cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args", [["sweep", TINY, "--n-j", "2"], ["sweep", TINY, "--stric"],
                                  ["status", TINY, "--stor", "x"], ["check", TINY, "--js"]])
def test_abbreviated_options_are_refused_in_one_line(cli, tmp_path, args):
    code, out, err = cli(*args, "--results", tmp_path / "r")
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("harness: error: unrecognized arguments"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["bogus"], "invalid choice: 'bogus'"),                         # an unknown command
    (["sweep", TINY, "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["tune"], "the following arguments are required: variant"),
    ([], "the following arguments are required: command"),
])
def test_a_bad_command_line_is_one_error_line_and_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: ") and message in err, err


def test_a_bad_command_line_in_a_fresh_process_prints_no_usage_block(tmp_path):
    code, out, err = harness("sweep", "--n-j", "3", cwd=tmp_path)
    assert code == 2 and out == "" and "usage:" not in err
    assert err.splitlines() == ["harness: error: unrecognized arguments: --n-j (see 'harness --help')"]


@pytest.mark.parametrize("variants, code", [('["image_only", "tanh_posted"]', 1), ('["image_only"]', 0)])
def test_check_strict_exits_1_when_a_variant_is_predicted_to_fail(cli, variants, code):
    got, out, err = cli("check", TINY, "--set", "data.n_images=48", "--set", f"variants={variants}", "--strict")
    assert got == code, err[-2000:]
    assert ("predicted to fail: tanh_posted" in err) == (code == 1)
    plain, _, err = cli("check", TINY, "--set", "data.n_images=48", "--set", f"variants={variants}")
    assert plain == 0, err[-2000:]                                   # without --strict: it ran, exit 0
