"""The admin endpoint's own text exposition: byte for byte what prometheus_client writes for the
same families (the library is a test dependency here, so it serves as the reference), and
process figures that agree with the kernel's."""

from __future__ import annotations

import math
import os

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from zmqagents.sidecar import exposition as ex

ODD = 'a "quoted" back\\slash\nnew line, ünïcode'


def _ours() -> list[ex.MetricFamily]:
    labelled = ex.counter("zmqagents_dropped_messages", "Drops by\nlayer and \\reason.", labels=["layer", "reason"])
    labelled.add_metric(["transport", "oversize"], 3)
    labelled.add_metric(["node", ODD], 0)
    states = ex.gauge("zmqagents_peers", "Peers by state.", labels=["state"])
    for state, n in (("alive", 7), ("suspect", 1)):
        states.add_metric([state], n)
    return [
        ex.info("zmqagents_node", "Identity.", {"node_id": "ab" * 32, "version": "0.1.0"}),
        ex.counter("zmqagents_transport_sent_bytes_total", "Bytes.", 12345678901),
        ex.counter("zmqagents_retransmits", "No _total in the name.", 0),
        ex.gauge("zmqagents_inbox_bytes", "Gauge.", 0.25),
        ex.gauge("zmqagents_big", "Large and odd values.", 1.5e300),
        ex.gauge("zmqagents_inf", "Infinite.", math.inf),
        ex.gauge("zmqagents_minus_inf", "Negative infinite.", -math.inf),
        labelled, states,
        ex.histogram("zmqagents_task_duration_seconds", "Run time.",
                     [("0.005", 1), ("0.1", 4), ("2.5", 4), ("+Inf", 6)], 12.75),
    ]


class _Reference:
    def collect(self):
        labelled = CounterMetricFamily("zmqagents_dropped_messages", "Drops by\nlayer and \\reason.",
                                       labels=["layer", "reason"])
        labelled.add_metric(["transport", "oversize"], 3)
        labelled.add_metric(["node", ODD], 0)
        states = GaugeMetricFamily("zmqagents_peers", "Peers by state.", labels=["state"])
        for state, n in (("alive", 7), ("suspect", 1)):
            states.add_metric([state], n)
        yield InfoMetricFamily("zmqagents_node", "Identity.", value={"node_id": "ab" * 32, "version": "0.1.0"})
        yield CounterMetricFamily("zmqagents_transport_sent_bytes_total", "Bytes.", value=12345678901)
        yield CounterMetricFamily("zmqagents_retransmits", "No _total in the name.", value=0)
        yield GaugeMetricFamily("zmqagents_inbox_bytes", "Gauge.", value=0.25)
        yield GaugeMetricFamily("zmqagents_big", "Large and odd values.", value=1.5e300)
        yield GaugeMetricFamily("zmqagents_inf", "Infinite.", value=math.inf)
        yield GaugeMetricFamily("zmqagents_minus_inf", "Negative infinite.", value=-math.inf)
        yield labelled
        yield states
        yield HistogramMetricFamily("zmqagents_task_duration_seconds", "Run time.",
                                    buckets=[("0.005", 1), ("0.1", 4), ("2.5", 4), ("+Inf", 6)], sum_value=12.75)


def test_our_text_is_what_prometheus_client_writes_for_the_same_families():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reference())
    reference = generate_latest(registry)
    ours = ex.render(_ours())
    assert ours == reference, (ours.decode(), reference.decode())


def test_the_parser_reads_back_names_labels_and_values():
    families = {f.name: f for f in text_string_to_metric_families(ex.render(_ours()).decode())}
    drops = families["zmqagents_dropped_messages"]
    assert drops.type == "counter"
    assert {(s.labels["reason"], s.value) for s in drops.samples} == {("oversize", 3.0), (ODD, 0.0)}
    hist = families["zmqagents_task_duration_seconds"]
    assert {s.name: s.value for s in hist.samples if not s.name.endswith("_bucket")} == {
        "zmqagents_task_duration_seconds_count": 6.0, "zmqagents_task_duration_seconds_sum": 12.75}


def test_value_format_follows_go():
    assert [ex.format_value(v) for v in (3, 0.1, 1e7, 1234567.0, float("nan"), -2.5)] == \
        ["3.0", "0.1", "1e+07", "1.234567e+06", "NaN", "-2.5"]


def test_process_families_agree_with_the_kernel():
    families = {f.name: f for f in ex.process_families()}
    assert set(families) == {"process_virtual_memory_bytes", "process_resident_memory_bytes",
                             "process_start_time_seconds", "process_cpu_seconds", "process_open_fds",
                             "process_max_fds"}
    rss = families["process_resident_memory_bytes"].samples[0][2]
    with open("/proc/self/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(rss - vm_rss) < 16 * 2**20  # read a moment apart
    cpu = families["process_cpu_seconds"].samples[0][2]
    times = os.times()
    assert 0 < cpu <= times.user + times.system + 0.05
    assert families["process_open_fds"].samples[0][2] >= 3


def test_no_proc_no_process_families(tmp_path):
    assert ex.process_families(str(tmp_path / "missing")) == []
