"""System metrics in a stage's run: MLflow's monitor, the job's GPUs, a stage shorter than an interval."""

import pytest

from pipeline.tracking.system import gpu_count, visible_gpus

from helpers import python_stage, run_tracked, tracked_runs

SYSTEM = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
}


@pytest.mark.integration
def test_a_stage_run_gets_the_nodes_cpu_and_memory_over_time(tmp_path):
    proc = run_tracked(
        tmp_path,
        "--stage",
        "pca",
        "--log",
        "pca.log",
        "--system-metrics-s",
        "0.5",
        "--gpus",
        "auto",
        *python_stage("import time; time.sleep(3)"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "system_metrics" not in proc.stderr  # MLflow's start and stop lines stay out of the stage's log
    client, by_name = tracked_runs(tmp_path)
    run = by_name["pca"]
    assert SYSTEM <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 3 and sorted(m.step for m in history) == list(range(len(history)))
    assert all(0 <= m.value <= 100 for m in history)
    memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
    assert all(m.value > 10 for m in memory)
    # this machine has no GPU: none are sampled, and nothing says otherwise in the log
    assert not any(k.startswith("system/gpu") for k in run.data.metrics)


@pytest.mark.integration
def test_a_stage_shorter_than_one_interval_still_gets_a_sample(tmp_path):
    proc = run_tracked(tmp_path, "--stage", "pca", "--log", "pca.log", "--system-metrics-s", "15", "--", "true")
    assert proc.returncode == 0, proc.stderr
    _, by_name = tracked_runs(tmp_path)
    assert SYSTEM <= set(by_name["pca"].data.metrics)


@pytest.mark.integration
def test_off_by_default_and_with_zero(tmp_path):
    for stage, interval in (("pca", []), ("fetch", ["--system-metrics-s", "0"])):
        proc = run_tracked(tmp_path, "--stage", stage, "--log", f"{stage}.log", *interval, "--", "true")
        assert proc.returncode == 0, proc.stderr
    _, by_name = tracked_runs(tmp_path)
    assert set(by_name) == {"pca", "fetch"}
    assert not any(k.startswith("system/") for run in by_name.values() for k in run.data.metrics)


@pytest.mark.unit
def test_the_jobs_gpus_are_the_first_visible_ones():
    assert visible_gpus(2, {}) == ["0", "1"]
    assert visible_gpus(1, {"CUDA_VISIBLE_DEVICES": "3,1"}) == ["3"]
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb,GPU-cc"}) == ["GPU-aa", "GPU-bb"]
    assert visible_gpus(1, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert (gpu_count("auto"), gpu_count("2"), gpu_count("0")) == (1, 2, 0)
    with pytest.raises(ValueError, match="--gpus 'two': expected a number or auto"):
        gpu_count("two")
