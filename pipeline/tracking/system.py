"""System metrics of a stage's MLflow run: MLflow's own monitor, sampled on the job's node.

CPU utilisation, memory, disk and network always; utilisation, memory and
power of the GPUs the job holds where NVML finds them (nvidia-ml-py, in
envs/cuda.txt). MLflow logs them as `system/...` metrics, which the run page
shows as charts beside the stage's own. The wrapper around the stage samples,
not the stage: the stage never imports mlflow, and the numbers are the
node's, which is what a job shares with whatever else runs there.

MLflow's monitor drops the samples it has not logged when the run ends, so a
stage shorter than one interval would show nothing; `stop` logs them. The
GPUs: NVML numbers every GPU of the node, CUDA numbers those the job may
see (CUDA_VISIBLE_DEVICES, set by SLURM's --gres and by users) and a stage
takes the first ones of those (pipeline/devices.py), so the monitor keeps the
first `gpus` of the visible ones.
"""

from __future__ import annotations

import logging
import os
import threading

_log = logging.getLogger(__name__)


def gpu_count(gpus: str) -> int:
    """N, or auto: 1 (a stage on devices auto takes the first GPU when there is one)."""
    if gpus == "auto":
        return 1
    try:
        count = int(gpus)
    except ValueError:
        raise ValueError(f"--gpus {gpus!r}: expected a number or auto") from None
    if count < 0:
        raise ValueError(f"--gpus {gpus!r}: expected 0 or more")
    return count


def visible_gpus(gpus: int, environ=os.environ) -> list[str]:
    """NVML identities (indices, or UUIDs) of the first `gpus` GPUs CUDA lets this job see."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else None
    if ids is None:
        return [str(i) for i in range(gpus)]
    return ids[:gpus]


def _keep_gpus(monitor, gpus: int) -> None:
    """Narrow MLflow's GPU monitor (every GPU of the node) to the job's."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    for m in list(monitor.monitors):
        if not isinstance(m, GPUMonitor):
            continue
        if gpus <= 0:
            monitor.monitors.remove(m)
            continue
        import pynvml

        handles = []
        for ident in visible_gpus(gpus):
            try:
                handles.append(
                    pynvml.nvmlDeviceGetHandleByIndex(int(ident))
                    if ident.isdigit()
                    else pynvml.nvmlDeviceGetHandleByUUID(ident)
                )
            except pynvml.NVMLError as exc:
                _log.warning("GPU %s is not known to NVML (%s): no metrics for it", ident, exc)
        m.gpu_handles, m.num_gpus = handles, len(handles)


def _monitor_class():
    """MLflow's monitor, whose sampling thread first takes its own CPU reference reading.

    Without it the thread's first CPU sample is psutil's first reading in
    that thread, which is 0 by definition, and the chart starts at 0%."""
    import psutil
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        def monitor(self):
            psutil.cpu_percent()
            if not self._shutdown_event.wait(min(1.0, self.sampling_interval)):
                super().monitor()

    return Monitor


class SystemMetrics:
    """Samples every `interval_s` seconds into the stage's run once it is known; 0 turns it off."""

    def __init__(self, tracking_uri: str, interval_s: float, gpus: str = "0"):
        self.uri, self.interval_s, self.gpus = tracking_uri, interval_s, gpu_count(gpus)
        self.monitor, self.stopped = None, False
        self.lock = threading.Lock()  # the run may open in the metrics follower's thread as the stage ends
        if interval_s > 0:
            import psutil

            # CPU utilisation is a difference between two readings, and psutil keeps the earlier one
            # per thread: this one is the reference of the last sample, which `stop` takes here
            psutil.cpu_percent()

    def start(self, run_id: str, resumed: bool = False) -> None:
        """Called with the run when it opens (a resumed training continues its system metrics' steps)."""
        with self.lock:
            if self.interval_s <= 0 or self.monitor is not None or self.stopped:
                return
            self._start(run_id, resumed)

    def _start(self, run_id: str, resumed: bool) -> None:
        try:
            # its start, stop and "no GPU" lines would repeat in every stage's log
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            self.monitor = _monitor_class()(
                run_id, sampling_interval=self.interval_s, resume_logging=resumed, tracking_uri=self.uri
            )
            _keep_gpus(self.monitor, self.gpus)
            self.monitor.start()
        except Exception as exc:  # the stage runs and is tracked without them
            _log.warning("system metrics are off for this stage: %s", exc)
            self.monitor = None

    def stop(self) -> None:
        """Stop sampling; log what was sampled since the last logging, and one last sample."""
        with self.lock:
            self.stopped = True
            monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        monitor.finish()
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:
            _log.warning("the last system metrics of this stage were not logged: %s", exc)
