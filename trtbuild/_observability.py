"""What a deployment is watched and scaled by: PromQL, alert rules, the Grafana dashboard and the
prometheus-adapter rule behind the autoscaler. Pure functions returning plain objects; ``deploy``
dumps them (YAML or JSON), nothing here writes text by hand.

The metrics, and who exports them (checked against a served portable runtime on Triton 2.51;
TensorRT-LLM's from its backend's documentation):

| metric | exported by |
|---|---|
| ``nv_inference_request_success`` / ``_failure`` / ``_queue_duration_us`` (counters, per model) | Triton, every backend |
| ``nv_inference_first_response_histogram_ms`` (histogram: time to first response, i.e. TTFT of a streamed ensemble request) | Triton with ``--metrics-config=histogram_latencies=true`` (not in the 2.51 wheel CI uses) |
| ``nv_trt_llm_request_metrics{request_type=active\\|waiting\\|max}`` | TensorRT-LLM's backend and trtbuild's portable runtime (one series per instance: ``model_instance``) |
| ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}`` | TensorRT-LLM's backend only |
| ``nv_llm_output_token_len`` (histogram of output tokens per request) | TensorRT-LLM's backend only |
| ``nv_gpu_utilization``, ``nv_gpu_memory_used_bytes`` / ``_total_bytes`` | Triton on GPUs (DCGM) |
| ``kube_pod_status_ready`` | kube-state-metrics |
"""

from __future__ import annotations

from typing import Any

# The custom metric the HorizontalPodAutoscaler reads (through prometheus-adapter), per pod.
INFLIGHT_METRIC = "trtbuild_inflight_requests"
INFLIGHT_SERIES = "nv_trt_llm_request_metrics"
HEADROOM = 0.8  # scale out at 80% of a replica's capacity: new replicas take minutes to load


def _sel(service: str, **labels: str) -> str:
    parts = [f'service="{service}"', *(f'{k}="{v}"' for k, v in labels.items())]
    return "{" + ",".join(parts) + "}"


def queries(service: str) -> dict[str, str]:
    """The PromQL behind the dashboard and the alerts, for the pods behind ``service``."""
    s = service
    inflight = f'{INFLIGHT_SERIES}{{service="{s}",request_type=~"active|waiting"}}'
    return {
        "ttft_p50_ms": "histogram_quantile(0.50, sum by (le) (rate("
        f"nv_inference_first_response_histogram_ms_bucket{_sel(s, model='ensemble')}[5m])))",
        "ttft_p99_ms": "histogram_quantile(0.99, sum by (le) (rate("
        f"nv_inference_first_response_histogram_ms_bucket{_sel(s, model='ensemble')}[5m])))",
        "queue_ms": "sum by (model) (rate(nv_inference_queue_duration_us"
        f'{{service="{s}",model=~"ensemble|tensorrt_llm"}}[5m])) / 1000 / clamp_min(sum by '
        "(model) (rate(nv_inference_request_success"
        f'{{service="{s}",model=~"ensemble|tensorrt_llm"}}[5m])), 1e-9)',
        "inflight_per_pod": f"sum by (pod) ({inflight})",
        "waiting": f"sum ({INFLIGHT_SERIES}{_sel(s, request_type='waiting')})",
        "output_tokens_per_s": "sum (rate(nv_llm_output_token_len_sum"
        f"{_sel(s, model='tensorrt_llm')}[1m]))",
        "requests_per_s": f"sum (rate(nv_inference_request_success{_sel(s, model='ensemble')}[1m]))",
        "kv_cache_used": "max by (pod) (nv_trt_llm_kv_cache_block_metrics"
        f"{_sel(s, kv_cache_block_type='fraction')})",
        "gpu_memory_used_fraction": f"sum by (pod) (nv_gpu_memory_used_bytes{_sel(s)}) / "
        f"clamp_min(sum by (pod) (nv_gpu_memory_total_bytes{_sel(s)}), 1)",
        "gpu_utilization": f"avg by (pod) (nv_gpu_utilization{_sel(s)})",
        "error_ratio": f'sum (rate(nv_inference_request_failure{{service="{s}",model="ensemble"}}'
        "[5m])) / clamp_min(sum (rate(nv_inference_request_success"
        f'{{service="{s}",model="ensemble"}}[5m])) + sum (rate(nv_inference_request_failure'
        f'{{service="{s}",model="ensemble"}}[5m])), 1e-9)',
        "errors_by_reason": f"sum by (reason) (rate(nv_inference_request_failure{_sel(s)}[5m]))",
    }


# -- alert rules (a PrometheusRule object) ---------------------------------------------------------
def prometheus_rule(
    name: str, namespace: str | None, labels: dict[str, str], sla_ttft_ms: float, not_ready_for: int
) -> dict[str, Any]:
    q = queries(name)
    pods = f'kube_pod_status_ready{{condition="true",pod=~"{name}-.*"'
    pods += f',namespace="{namespace}"}}' if namespace else "}"
    minutes = max(10, -(-not_ready_for // 60))
    rules = [
        {
            "alert": "TrtbuildTTFTp99OverSLA",
            "expr": f"{q['ttft_p99_ms']} > {sla_ttft_ms:g}",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{name}: time to first token p99 is over {sla_ttft_ms:g} ms",
                "description": "p99 of Triton's first-response histogram of the ensemble over "
                "5 minutes, {{ $value | humanize }} ms. Add replicas (check the autoscaler's "
                "max) or lower max_batch_size.",
            },
        },
        {
            "alert": "TrtbuildQueueGrowing",
            "expr": f"{q['waiting']} > 0 and deriv(({q['waiting']})[10m:1m]) > 0",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{name}: requests are waiting and the queue keeps growing",
                "description": "Requests waiting for a batch slot (nv_trt_llm_request_metrics "
                "waiting) rose for 10 minutes: demand is above what the replicas serve.",
            },
        },
        {
            "alert": "TrtbuildReplicaNotReady",
            "expr": f"{pods} == 0",
            "for": f"{minutes}m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"{name}: pod {{{{ $labels.pod }}}} has not been ready for {minutes}m",
                "description": "Longer than the startup budget: the model did not load, or a "
                "model died (trtbuild's readiness probe is Triton's /v2/health/ready).",
            },
        },
        {
            "alert": "TrtbuildRequestsFailing",
            "expr": f"{q['error_ratio']} > 0.05",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{name}: over 5% of ensemble requests fail",
                "description": "nv_inference_request_failure over all ensemble requests, "
                "5 minutes.",
            },
        },
    ]
    metadata: dict[str, Any] = {"name": f"{name}-alerts", "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": [{"name": f"{name}.rules", "rules": rules}]},
    }


# -- the prometheus-adapter rule ----------------------------------------------------------------------
def adapter_rule(service: str) -> dict[str, Any]:
    """One ``rules.custom`` entry of prometheus-adapter: requests in flight (active + waiting) per
    pod, summed over the pod's tensorrt_llm instances, as the custom metric the HPA reads."""
    return {
        "seriesQuery": f'{INFLIGHT_SERIES}{{service="{service}",namespace!="",pod!="",'
        'request_type="active"}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": f"^{INFLIGHT_SERIES}$", "as": INFLIGHT_METRIC},
        "metricsQuery": "sum by (<<.GroupBy>>) (max_over_time("
        f'{INFLIGHT_SERIES}{{request_type=~"active|waiting",<<.LabelMatchers>>}}[1m]))',
    }


# -- the Grafana dashboard -------------------------------------------------------------------------
def _panel(
    index: int, title: str, exprs: dict[str, str], unit: str, description: str
) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for i, (legend, expr) in enumerate(exprs.items())
        ],
    }


def dashboard(name: str, sla_ttft_ms: float) -> dict[str, Any]:
    q = queries(name)
    specs = [
        ("Time to first token", {"p50": q["ttft_p50_ms"], "p99": q["ttft_p99_ms"]}, "ms",
         f"Triton's first-response histogram of the ensemble (streamed requests); SLA "
         f"{sla_ttft_ms:g} ms. Needs --metrics-config=histogram_latencies=true (the manifests "
         "set it)."),
        ("Queue time per request", {"{{model}}": q["queue_ms"]}, "ms",
         "Time in Triton's queue before execution. The LLM's own queue is the waiting requests "
         "next to this panel."),
        ("Requests in flight per pod", {"{{pod}}": q["inflight_per_pod"], "waiting": q["waiting"]},
         "short", "Active + waiting requests per pod: what the autoscaler scales on."),
        ("Output tokens/s", {"tokens/s": q["output_tokens_per_s"],
                             "requests/s": q["requests_per_s"]}, "short",
         "Output tokens from TensorRT-LLM's nv_llm_output_token_len histogram (the portable "
         "runtime does not export it: requests/s only)."),
        ("KV-cache use", {"{{pod}}": q["kv_cache_used"]}, "percentunit",
         "Fraction of KV-cache blocks in use (TensorRT-LLM)."),
        ("GPU memory used", {"{{pod}}": q["gpu_memory_used_fraction"]}, "percentunit",
         "Triton's GPU metrics (DCGM)."),
        ("GPU utilisation", {"{{pod}}": q["gpu_utilization"]}, "percentunit",
         "Triton's GPU metrics (DCGM)."),
        ("Errors", {"{{reason}}": q["errors_by_reason"], "ensemble error ratio": q["error_ratio"]},
         "short", "Failed requests per second by reason, and the ensemble's failure ratio."),
    ]  # fmt: skip
    return {
        "title": f"trtbuild: {name}",
        "uid": f"trtbuild-{name}"[:40],
        "tags": ["trtbuild", "triton", "llm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": [_panel(i, *spec) for i, spec in enumerate(specs)],
    }
