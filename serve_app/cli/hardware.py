"""`hfserve hardware [--json]`: every node of a running Ray cluster, from its hardware actor,
or this machine's own detection when no cluster runs."""

from __future__ import annotations

import contextlib
import io

from hardware.report import NodeReport
from hardware.select import BackendUnavailableError, select_backend


def cluster_or_local_reports(address: str = "auto") -> tuple[list[NodeReport], str]:
    import ray

    from hardware.detect import detect
    from hardware.probe import cluster_reports

    try:
        # Ray prints connection chatter to stderr; a missing cluster is an answer here.
        with contextlib.redirect_stderr(io.StringIO()):
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError):
        return [detect()], "this machine (no Ray cluster is running)"
    try:
        return cluster_reports(), f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
    finally:
        ray.shutdown()


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "?"


def render(reports: list[NodeReport], where: str) -> str:
    lines = [f"{len(reports)} node(s) in {where}"]
    for report in sorted(reports, key=lambda r: r.hostname):
        cpu = report.cpu
        isa = ", ".join(name for name, on in (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512), ("AMX", cpu.amx)) if on) or "none"
        lines += [
            "",
            f"{report.hostname}" + (f"  node {report.node_id[:12]}  {report.node_ip}" if report.node_id else ""),
            f"  cpu       {cpu.model}: {cpu.logical_cores} logical cores, {_gib(cpu.memory_total_bytes)} "
            f"({_gib(cpu.memory_available_bytes)} free), {isa}",
        ]
        for name, platform in report.platforms.items():
            if name == "cpu":
                continue
            if not platform.available:
                lines.append(f"  {name:<9} no: {platform.reason}")
                continue
            devices = "; ".join(
                d.name + (f" {d.properties['FULL_DEVICE_NAME']}" if "FULL_DEVICE_NAME" in d.properties else "")
                + (f" ({_gib(d.total_memory_bytes)})" if d.total_memory_bytes else "") for d in platform.devices
            )
            lines.append(f"  {name:<9} yes{' ' + platform.version if platform.version else ''}: {devices or platform.reason}")
        lines.append(f"  vllm      {'yes ' + report.vllm if report.vllm else 'no: not in this environment'}")
        try:
            choice = select_backend("auto", ("cuda", "rocm", "mps", "openvino", "qnn", "cpu"), "auto", report)
            lines.append(f"  auto ->   {choice.platform} ({choice.backend} on {choice.device})")
        except BackendUnavailableError as exc:
            lines.append(f"  auto ->   nothing usable: {exc}")
    return "\n".join(lines)
