"""`sweep --n-jobs`: workers sharing a GPU are capped at their share of its memory; `--n-jobs auto`
takes the worker count that `harness bench` measured fastest on this kind of device."""
import json

import pytest

from conftest import ROOT
from harness import workers
from harness.errors import HarnessError


def test_workers_sharing_a_gpu_are_capped_at_their_share():
    four_on_one = [workers.worker_env(i, 4, gpus=1, memory_mib=143_000) for i in range(4)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in four_on_one} == {"0"}
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in four_on_one} == {"0.225"}
    assert {e["HARNESS_GPU_MEMORY_MB"] for e in four_on_one} == {str(int(143_000 * 0.225))}
    three_on_two = [workers.worker_env(i, 3, gpus=2, memory_mib=None) for i in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in three_on_two] == ["0", "1", "0"]
    assert [e.get("XLA_PYTHON_CLIENT_MEM_FRACTION") for e in three_on_two] == ["0.450", None, "0.450"]
    assert "HARNESS_GPU_MEMORY_MB" not in three_on_two[0]            # memory unknown: JAX's cap only
    alone = workers.worker_env(0, 2, gpus=2, memory_mib=143_000)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in alone and "HARNESS_GPU_MEMORY_MB" not in alone
    assert "CUDA_VISIBLE_DEVICES" not in workers.worker_env(1, 2, gpus=0, memory_mib=None)


def write_figures(results, name, figures):
    (results / "bench").mkdir(parents=True, exist_ok=True)
    (results / "bench" / name).write_text(json.dumps({"figures": figures}))


def test_n_jobs_auto_takes_what_bench_measured(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(workers, "gpu_count", lambda: 0)
    assert workers.resolve_n_jobs("auto", tmp_path) == 1                  # nothing measured: one worker, said so
    assert "run `harness bench` to measure it" in capsys.readouterr().out
    write_figures(tmp_path, "bench.json", {"n_jobs_2_speedup": 0.8})
    assert workers.resolve_n_jobs("auto", tmp_path) == 1
    write_figures(tmp_path, "bench.json", {"n_jobs_2_speedup": 1.3})
    assert workers.resolve_n_jobs("auto", tmp_path) == 2
    monkeypatch.setattr(workers, "gpu_count", lambda: 2)
    assert workers.resolve_n_jobs("auto", tmp_path) == 2                  # no gpu-check yet: one per GPU
    write_figures(tmp_path, "gpu-check.json", {"best_workers": 4})
    assert workers.resolve_n_jobs("auto", tmp_path) == 8
    assert "best_workers 4" in capsys.readouterr().out
    assert workers.resolve_n_jobs("3", tmp_path) == 3
    for bad in ("0", "many"):
        with pytest.raises(HarnessError, match="--n-jobs must be"):
            workers.resolve_n_jobs(bad, tmp_path)


def test_a_bad_n_jobs_is_one_line_exit_2(cli):
    code, out, err = cli("sweep", ROOT / "tests" / "data" / "tiny.toml", "--n-jobs", "many")
    assert code == 2 and err.strip().splitlines() == ["harness: error: --n-jobs must be an integer >= 1 or auto, got 'many'"]
