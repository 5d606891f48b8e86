"""The kubernetes target: a cluster's GPU pool, each attempt an Indexed ``batch/v1`` Job.

One attempt makes four objects, all labelled with the run, the attempt and this runner (what
teardown and ``hml gc`` find them by) and owned by the Job once it exists, so deleting the Job
takes the rest with it:

- a **ConfigMap** with the wrapper every target runs (``hmlkit.node.jobscript``) and the workdir
  as a gzipped tar: the code reaches the pod without an image build (1 MiB at most, the
  ConfigMap's limit; larger trees belong in ``inputs:`` or the image, docs/runner.md);
- a **Secret** with the job's whole environment (vault values, the tracking token): the pod
  takes it with ``envFrom``, so no value is in the pod spec, and teardown deletes it;
- a headless **Service** for the torchrun rendezvous (``<job>-0.<service>``);
- the **Job**: completions = parallelism = ``num_nodes``, ``backoffLimit: 0`` (retries are hml's,
  as on every target), the pool's node selector and tolerations, GPU requests and limits, and
  ``activeDeadlineSeconds`` behind ``max_runtime``.

Each pod unpacks the ConfigMap into an emptyDir, runs the wrapper (redaction, the relay, system
metrics, ``exit_code``) and prints the wrapper's ``output.log`` on its stdout, so the log API
gives redacted lines; the pod's exit code is the job's. The runner reads each pod's log with
timestamps and keeps, per node, the last one it handed on (in the handle the supervisor
persists): lines reach the run exactly once across a supervisor restart.

Pending pods the scheduler cannot place are ``queued`` with its own words ("0/3 nodes are
available: 3 Insufficient nvidia.com/gpu") and cost nothing; OOMKilled, eviction, preemption, a
lost node and the Job's deadline become the run's reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError, UsageError
from hmlkit.extras import require
from hmlkit.node import datafetch, jobscript
from hmlkit.profile import KubernetesTarget
from runners.backends.base import Backend, Handle, JobState, LaunchRequest, Usage
from runners.backends.nodes import torchrun_line
from runners.data import stage as data_stage
from runners.envs.lock import python_of
from runners.spec import JobSpec, memory_mib
from runners.state.paths import runner_id

RUN_LABEL = "hml.dev/run"
ATTEMPT_LABEL = "hml.dev/attempt"
RUNNER_LABEL = "hml.dev/runner"
CONTAINER = "job"
HOME = "/hml"
"""The pod's working directory; the wrapper lives under it, in an emptyDir."""
FILES = f"{HOME}/files"
MASTER_PORT = 29500
"""Each pod has its own network namespace: torchrun's usual port is free in every one."""
DEADLINE_MARGIN_S = 30
"""``activeDeadlineSeconds`` is ``max_runtime`` plus this: the supervisor stops the job at
``max_runtime`` itself (and says so); the Job's deadline backs it up when no supervisor is left."""
CANCEL_WAIT_S = 60.0
WORKDIR_TAR = "workdir.tgz"

INPUTS_PLAN_VAR = "HML_INPUTS_PLAN"
"""The inputs' plan with its presigned URLs: in the run's Secret, never the ConfigMap; the boot
script writes it to a file for ``datafetch`` and unsets it before the job starts."""
INPUTS_SH, DATAFETCH = "inputs.sh", "datafetch.py"
SECRET_ROOM = 900_000
"""Bytes of the inputs' plan a run's Secret takes (its limit is 1 MiB, the job's environment too)."""

_PLACEHOLDER_EXEC, _PLACEHOLDER_CODE, _PLACEHOLDER_DATA = "@HML_EXEC@", "@HML_CODE@", "@HML_DATA@"
_BOOT = f"""set -u
H=$PWD; EXEC=$H/run/exec; CODE=$H/run/code
mkdir -p "$EXEC" "$CODE" && cp "$H/files/"* "$EXEC/" && rm -f "$EXEC/{WORKDIR_TAR}"
tar -xzf "$H/files/{WORKDIR_TAR}" -C "$CODE" || exit 127
sed -i "s#{_PLACEHOLDER_EXEC}#$EXEC#g; s#{_PLACEHOLDER_CODE}#$CODE#g" "$EXEC/{jobscript.WRAPPER}"
if [ -f "$EXEC/{INPUTS_SH}" ]; then  # the job's inputs: fetched from the store into the pod
  D=$H/run/data; P="$EXEC/inputs-plan.json"
  (umask 077; printf '%s' "${{{INPUTS_PLAN_VAR}:-}}" | sed "s#{_PLACEHOLDER_DATA}#$D#g" > "$P")
  python3 -I -S "$EXEC/{DATAFETCH}" "$P" > "$EXEC/inputs.json" ||
    {{ echo "hml: staging the inputs failed"; exit 1; }}
  sed -i "s#{_PLACEHOLDER_DATA}#$D#g" "$EXEC/{INPUTS_SH}" && . "$EXEC/{INPUTS_SH}"
fi
unset {INPUTS_PLAN_VAR}
: > "$EXEC/{jobscript.ENV_FILE}"; : > "$EXEC/{jobscript.OUTPUT}"
export NODE_RANK="$JOB_COMPLETION_INDEX" HML_NODE_RANK="$JOB_COMPLETION_INDEX" HML_CODE_DIR="$CODE"
bash "$EXEC/{jobscript.WRAPPER}" & wrapper=$!
tail -n +1 -F --pid="$wrapper" "$EXEC/{jobscript.OUTPUT}" 2>/dev/null
wait "$wrapper"; exit "$(cat "$EXEC/{jobscript.EXIT_CODE}" 2>/dev/null || echo 1)"
"""
"""The container's command: the wrapper, relocated under the pod's working directory, with its
``output.log`` (redacted at the source) on stdout for the log API; the wrapper's exit code."""

REASONS = {
    "OOMKilled": "Kubernetes OOMKilled: the job used more than its memory limit; raise resources.memory",
    "Evicted": "Kubernetes evicted the pod",
    "EvictionByEvictionAPI": "Kubernetes evicted the pod (drain or eviction API)",
    "PreemptionByScheduler": "Kubernetes PREEMPTED: the scheduler took the node for a higher-priority pod",
    "DeletionByTaintManager": "Kubernetes node lost: the node went NotReady and its pods were deleted",
    "DeletionByPodGC": "Kubernetes node lost: the pod's node is gone",
    "TerminationByKubelet": "Kubernetes: the node's kubelet ended the pod (node pressure or shutdown)",
    "DeadlineExceeded": "Kubernetes DeadlineExceeded: the Job reached activeDeadlineSeconds (max_runtime)",
}


class PodCursor(Handle):
    pod: str = ""
    last_ns: int = 0
    """The log timestamp of the last line handed on: the next read starts after it."""


class KubeHandle(Handle):
    job: str
    namespace: str
    run_id: str
    attempt: int
    nodes: int
    cursors: list[PodCursor] = []


def _ns(stamp: str) -> int:
    """Nanoseconds since the epoch from the log API's RFC 3339 time (trailing zeros trimmed)."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 10**9 + int((frac + "000000000")[:9])


def _since(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: str) -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``16Gi``) as a number."""
    units = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


def pod_reason(pod: Any) -> str:
    """Why a pod ended other than by its command's exit (empty: it exited on its own)."""
    for cond in pod.status.conditions or []:
        if cond.type == "DisruptionTarget" and cond.status == "True":
            return REASONS.get(
                cond.reason, f"Kubernetes disrupted the pod: {cond.reason} {cond.message or ''}".strip()
            )
    if pod.status.reason in REASONS:
        return REASONS[pod.status.reason]
    for status in pod.status.container_statuses or []:
        ended = status.state.terminated if status.state else None
        if ended is not None and ended.reason in REASONS:
            return REASONS[ended.reason]
    return ""


def exit_code(pod: Any) -> int | None:
    for status in pod.status.container_statuses or []:
        ended = status.state.terminated if status.state else None
        if ended is not None:
            return int(ended.exit_code)
    return None


class KubernetesBackend(Backend[KubeHandle]):
    kind = "kubernetes"
    Config = KubernetesTarget
    handle_type = KubeHandle
    poll_interval = 1.0
    """Each poll is two API reads (the Job, its pods): once a second is light for an apiserver."""
    config: KubernetesTarget

    def __init__(self, name: str, config: KubernetesTarget) -> None:
        super().__init__(name, config)
        self._api: Any = None
        self._requests = 0

    # the API

    @property
    def api(self) -> Any:
        if self._api is None:
            k8s_config = require("kubernetes.config", f"target {self.name!r} (kind kubernetes)")
            try:
                if self.config.in_cluster:
                    k8s_config.load_incluster_config()
                    self._api = require("kubernetes.client").ApiClient()
                else:
                    self._api = k8s_config.new_client_from_config(
                        config_file=self.config.kubeconfig, context=self.config.context
                    )
            except (k8s_config.ConfigException, OSError, ValueError) as exc:
                raise UsageError(
                    f"target {self.name!r}: cannot load the Kubernetes config "
                    f"(kubeconfig {self.config.kubeconfig or '$KUBECONFIG or ~/.kube/config'}, "
                    f"context {self.config.context or 'current'}): {exc}; fix kubeconfig/context"
                ) from None
        return self._api

    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kw: Any
    ) -> Any:
        client = require("kubernetes.client")
        self._requests += 1
        try:
            return fn(*args, **kw)
        except client.ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise BackendError(
                f"Kubernetes refused to {what}: {exc.status} {exc.reason}: {_message(exc)}"
            ) from None
        except Exception as exc:  # urllib3's connection errors: the API does not answer
            if type(exc).__module__.startswith(("urllib3", "ssl", "socket")) or isinstance(exc, OSError):
                raise BackendError(f"the Kubernetes API does not answer ({what}): {exc}") from None
            raise

    def _core(self) -> Any:
        return require("kubernetes.client").CoreV1Api(self.api)

    def _batch(self) -> Any:
        return require("kubernetes.client").BatchV1Api(self.api)

    def commands_sent(self) -> int:
        return self._requests

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    # submit

    def _workdir_tar(self, workdir: Path) -> bytes:
        from hmlkit.ssh.staging import scan

        manifest = scan(workdir, int(self.config.max_workdir_mb * 1e6))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
            for entry in manifest.entries:
                tar.add(workdir / entry.path, arcname=entry.path, recursive=False)
        data = buf.getvalue()
        if len(data) > self.config.max_workdir_mb * 1e6:
            raise UsageError(
                f"target {self.name!r}: the workdir packs to {len(data) / 1e6:.2f} MB, over max_workdir_mb "
                f"({self.config.max_workdir_mb}; a ConfigMap holds 1 MiB): move data to inputs: or the image"
            )
        return data

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        self._workdir_tar(workdir)

    def _labels(self, run_id: str, attempt: int) -> dict[str, str]:
        return {RUN_LABEL: run_id, ATTEMPT_LABEL: str(attempt), RUNNER_LABEL: runner_id()}

    def _resources(self, spec: JobSpec) -> dict[str, dict[str, str]]:
        res = spec.resources
        requests: dict[str, str] = {}
        if res.cpus:
            requests["cpu"] = str(res.cpus)
        if res.memory:
            requests["memory"] = f"{memory_mib(res.memory)}Mi"
        limits = {k: v for k, v in requests.items() if k == "memory"}  # CPU is shared, memory is not
        if res.gpus:
            requests[self.config.gpu_resource] = limits[self.config.gpu_resource] = str(res.gpus)
        return {"requests": requests, "limits": limits}

    def manifests(self, request: LaunchRequest, workdir_tar: bytes) -> dict[str, dict[str, Any]]:
        """The ConfigMap, Secret, Service and Job of one attempt (``--dry-run`` shows the Job)."""
        spec, cfg = request.spec, self.config
        name = f"hml-{request.run_id[:12].lower()}-{request.attempt}"
        labels = self._labels(request.run_id, request.attempt)
        meta = {"name": name, "namespace": cfg.namespace, "labels": labels}
        gpus = spec.resources.gpus
        run_text = torchrun_line(spec.run, spec.num_nodes > 1 or gpus > 1)
        files = jobscript.render(  # the image's Python plus the job's environment, built in the pod
            _PLACEHOLDER_EXEC,
            _PLACEHOLDER_CODE,
            spec.setup,
            run_text,
            request.run_id,
            list(request.secrets),
            request.environment,
            python_of(request.environment or ""),
        )
        env = {**request.env, **request.secrets}
        if request.inputs:  # every object presigned: a pod's emptyDir starts empty
            inputs = list(request.inputs)
            keys = {o.cache_key for inp in inputs for o in inp.snapshot.objects}
            env[INPUTS_PLAN_VAR] = json.dumps(data_stage.plan(inputs, _PLACEHOLDER_DATA, keys))
            if len(env[INPUTS_PLAN_VAR]) > SECRET_ROOM:
                raise UsageError(
                    f"inputs: {len(keys)} objects need {len(env[INPUTS_PLAN_VAR]) // 1000} kB of presigned"
                    " URLs, more than a Secret holds (1 MiB): snapshot fewer, larger objects (a tar"
                    " of the tree), or run on an ssh or slurm target"
                )
            files[DATAFETCH] = Path(datafetch.__file__).read_text()
            files[INPUTS_SH] = "".join(
                f'export {inp.env_name}="{_PLACEHOLDER_DATA}/inputs/{inp.snapshot.digest}"\n'
                for inp in inputs
            )
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": files,
            "binaryData": {WORKDIR_TAR: base64.b64encode(workdir_tar).decode()},
        }
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "stringData": env,
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "clusterIP": "None",
                "selector": {"batch.kubernetes.io/job-name": name},
                "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
                "publishNotReadyAddresses": True,
            },
        }
        rendezvous = {
            "MASTER_ADDR": f"{name}-0.{name}",
            "MASTER_PORT": str(MASTER_PORT),
            "NNODES": str(spec.num_nodes),
            "NPROC_PER_NODE": str(max(gpus, 1)),
            "HML_NUM_NODES": str(spec.num_nodes),
            "HML_GPUS_PER_NODE": str(gpus),
        }
        container = {
            "name": CONTAINER,
            "image": cfg.image,
            "command": ["bash", "-c", _BOOT],
            "workingDir": HOME,
            "envFrom": [{"secretRef": {"name": name}}],
            "env": [{"name": k, "value": v} for k, v in rendezvous.items()],
            "resources": self._resources(spec),
            "volumeMounts": [
                {"name": "files", "mountPath": FILES, "readOnly": True},
                {"name": "run", "mountPath": f"{HOME}/run"},
            ],
        }
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "subdomain": name,
            "automountServiceAccountToken": False,  # the job needs no API access
            "enableServiceLinks": False,
            "containers": [container],
            "volumes": [{"name": "files", "configMap": {"name": name}}, {"name": "run", "emptyDir": {}}],
            "nodeSelector": dict(cfg.node_selector),
            "tolerations": [t.model_dump(exclude_none=True) for t in cfg.tolerations],
        }
        if cfg.service_account:
            pod_spec["serviceAccountName"] = cfg.service_account
        if cfg.priority_class:
            pod_spec["priorityClassName"] = cfg.priority_class
        job_labels = dict(labels)
        if cfg.local_queue:
            job_labels["kueue.x-k8s.io/queue-name"] = cfg.local_queue
        job_spec: dict[str, Any] = {
            "completionMode": "Indexed",
            "completions": spec.num_nodes,
            "parallelism": spec.num_nodes,
            "backoffLimit": 0,
            # a disrupted pod (evicted, preempted, its node lost) ends the Job at once, its pod
            # kept with the condition that says why, rather than waiting out the other pods
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "suspend": bool(cfg.local_queue),  # Kueue admits it by unsuspending
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }
        if spec.max_runtime:
            job_spec["activeDeadlineSeconds"] = math.ceil(spec.max_runtime) + DEADLINE_MARGIN_S
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {**meta, "labels": job_labels},
            "spec": job_spec,
        }
        return {"configmap": config_map, "secret": secret, "service": service, "job": job}

    def launch(self, request: LaunchRequest) -> tuple[KubeHandle, Usage]:
        made = self.manifests(request, self._workdir_tar(request.workdir))
        core, batch, ns = self._core(), self._batch(), self.config.namespace
        handle = KubeHandle(
            job=made["job"]["metadata"]["name"],
            namespace=ns,
            run_id=request.run_id,
            attempt=request.attempt,
            nodes=request.spec.num_nodes,
            cursors=[PodCursor() for _ in range(request.spec.num_nodes)],
        )
        try:
            self._call("create the run's ConfigMap", core.create_namespaced_config_map, ns, made["configmap"])
            self._call("create the run's Secret", core.create_namespaced_secret, ns, made["secret"])
            self._call("create the run's Service", core.create_namespaced_service, ns, made["service"])
            job = self._call("create the Job", batch.create_namespaced_job, ns, made["job"])
            owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": handle.job, "uid": job.metadata.uid}]
            patch = {"metadata": {"ownerReferences": owner}}
            for what, fn in (
                ("ConfigMap", core.patch_namespaced_config_map),
                ("Secret", core.patch_namespaced_secret),
                ("Service", core.patch_namespaced_service),
            ):
                self._call(f"give the {what} to its Job", fn, handle.job, ns, patch)
        except BaseException:
            self.teardown(handle)
            raise
        usage = Usage(
            nodes=request.spec.num_nodes,
            gpus_per_node=request.spec.resources.gpus,
            gpu_hour_usd=self.config.gpu_hour_usd,
            hosts=[f"Kubernetes Job {ns}/{handle.job}"],
        )
        return handle, usage

    # follow

    def _pods(self, handle: KubeHandle) -> dict[int, Any]:
        """The attempt's pods by completion index (the newest of an index, should there be two)."""
        listed = self._call(
            "list the Job's pods",
            self._core().list_namespaced_pod,
            handle.namespace,
            label_selector=f"batch.kubernetes.io/job-name={handle.job}",
        )
        pods: dict[int, Any] = {}
        for pod in sorted(listed.items, key=lambda p: p.metadata.creation_timestamp):
            index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index")
            if index is not None:
                pods[int(index)] = pod
        return pods

    def poll(self, handle: KubeHandle) -> JobState:
        job = self._call(
            "read the Job", self._batch().read_namespaced_job, handle.job, handle.namespace, missing_ok=True
        )
        if job is None:
            return JobState(False, None, f"the Job {handle.namespace}/{handle.job} was deleted outside hml")
        pods = self._pods(handle)
        ended = {c.type: c for c in job.status.conditions or [] if c.status == "True"}
        terminal = {i: p for i, p in pods.items() if p.status.phase in ("Succeeded", "Failed")}
        if "Complete" in ended or (
            len(terminal) == handle.nodes and all(p.status.phase == "Succeeded" for p in terminal.values())
        ):
            return JobState(False, 0)
        failed = {i: p for i, p in terminal.items() if p.status.phase == "Failed"}
        multi = handle.nodes > 1
        if failed or "Failed" in ended or "FailureTarget" in ended:
            if failed:
                index, pod = min(failed.items())
                code, why = exit_code(pod), pod_reason(pod)
                if why:
                    return JobState(False, code, f"node {index}: {why}" if multi else why)
                if code is not None and code != 0:
                    return JobState(False, code, f"node {index} exited with {code}" if multi else "")
            gone = [i for i in range(handle.nodes) if i not in pods or pods[i].metadata.deletion_timestamp]
            disrupted = [pod_reason(p) for p in pods.values() if pod_reason(p)]
            condition = ended.get("Failed") or ended.get("FailureTarget")
            reason = condition.reason if condition else ""
            if reason in REASONS:
                return JobState(False, None, REASONS[reason])
            if disrupted:
                return JobState(False, None, disrupted[0])
            if condition and condition.reason == "PodFailurePolicy":
                return JobState(
                    False,
                    None,
                    f"Kubernetes disrupted a pod (evicted, preempted or its node lost): {condition.message}",
                )
            if gone:
                return JobState(False, None, f"{REASONS['DeletionByPodGC']} (node {gone[0]}'s pod vanished)")
            if condition:
                return JobState(False, None, f"Kubernetes {condition.reason}: {condition.message}")
        if job.spec.suspend:
            return JobState(True, detail="queued in Kueue: waiting for admission", queued=True)
        pending = [p for i, p in sorted(pods.items()) if p.status.phase == "Pending"]
        if len(pods) < handle.nodes or pending:
            return JobState(True, detail=f"queued in Kubernetes: {self._why_pending(pending)}", queued=True)
        return JobState(
            True, detail=f"running on {', '.join(sorted({p.spec.node_name for p in pods.values()}))}"
        )

    @staticmethod
    def _why_pending(pending: list[Any]) -> str:
        for pod in pending:
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.status == "False" and cond.message:
                    return str(cond.message)
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason:
                    return f"{waiting.reason}: {waiting.message or ''}".strip(": ")
        return "waiting for its pods to be scheduled" if not pending else "starting its pods"

    def read_output(self, handle: KubeHandle) -> bytes:
        pods = self._pods(handle)
        chunks = []
        multi = handle.nodes > 1
        for index, cursor in enumerate(handle.cursors):
            pod = pods.get(index)
            if pod is None or not pod.spec.node_name or pod.status.phase == "Pending":
                continue
            if cursor.pod != pod.metadata.name:
                cursor.pod, cursor.last_ns = pod.metadata.name, 0
            lines = []
            for line in self._log(handle.namespace, pod.metadata.name, cursor.last_ns).splitlines(
                keepends=True
            ):
                stamp, _, text = line.partition(b" ")
                try:
                    ns = _ns(stamp.decode())
                except ValueError:
                    continue
                if ns <= cursor.last_ns:
                    continue
                cursor.last_ns = ns
                text = text if text.endswith(b"\n") else text + b"\n"
                lines.append(b"[node %d] " % index + text if multi else text)
            chunks.append(b"".join(lines))
        return b"".join(chunks)

    def _log(self, namespace: str, pod: str, after_ns: int) -> bytes:
        query: list[tuple[str, str]] = [("container", CONTAINER), ("timestamps", "true")]
        if after_ns:
            query.append(("sinceTime", _since(after_ns)))
        response = self._call(
            "read the pod's log",
            self.api.call_api,
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            "GET",
            path_params={"namespace": namespace, "name": pod},
            query_params=query,
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            missing_ok=True,
        )
        return bytes(response.data) if response is not None else b""

    # end

    def _delete_job(self, handle: KubeHandle) -> None:
        client = require("kubernetes.client")
        self._call(
            "delete the Job",
            self._batch().delete_namespaced_job,
            handle.job,
            handle.namespace,
            body=client.V1DeleteOptions(propagation_policy="Foreground"),
            missing_ok=True,
        )

    def cancel(self, handle: KubeHandle) -> None:
        """Delete the Job with foreground propagation and return once none of its pods is left
        (the kubelet has stopped their containers), bounded by ``CANCEL_WAIT_S``."""
        self._delete_job(handle)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while self._pods(handle) and time.monotonic() < deadline:
            time.sleep(0.5)

    def teardown(self, handle: KubeHandle) -> None:
        """Delete everything labelled with this attempt: the Job (and so its pods), the Secret,
        the ConfigMap and the Service; idempotent."""
        self._delete_job(handle)
        selector = (
            f"{RUN_LABEL}={handle.run_id},{ATTEMPT_LABEL}={handle.attempt},{RUNNER_LABEL}={runner_id()}"
        )
        self._delete_labelled(handle.namespace, selector)

    def _delete_labelled(self, namespace: str, selector: str) -> None:
        core = self._core()
        for what, fn in (
            ("Secrets", core.delete_collection_namespaced_secret),
            ("ConfigMaps", core.delete_collection_namespaced_config_map),
        ):
            self._call(f"delete the run's {what}", fn, namespace, label_selector=selector)
        services = self._call(
            "list the run's Services", core.list_namespaced_service, namespace, label_selector=selector
        )
        for svc in services.items:  # Services have no delete-collection
            self._call(
                "delete the run's Service",
                core.delete_namespaced_service,
                svc.metadata.name,
                namespace,
                missing_ok=True,
            )

    def gc(self, is_live: Callable[[str], bool]) -> list[str]:
        """Delete this runner's Jobs, Secrets, ConfigMaps and Services whose run is over or unknown."""
        ns, mine = self.config.namespace, f"{RUNNER_LABEL}={runner_id()}"
        core, batch = self._core(), self._batch()
        runs: set[str] = set()
        for what, fn in (
            ("Jobs", batch.list_namespaced_job),
            ("Secrets", core.list_namespaced_secret),
            ("ConfigMaps", core.list_namespaced_config_map),
            ("Services", core.list_namespaced_service),
        ):
            for item in self._call(f"list this runner's {what}", fn, ns, label_selector=mine).items:
                runs.add((item.metadata.labels or {}).get(RUN_LABEL, ""))
        done = []
        for run_id in sorted(r for r in runs if r and not is_live(r)):
            selector = f"{mine},{RUN_LABEL}={run_id}"
            self._call(
                "delete the run's Jobs",
                batch.delete_collection_namespaced_job,
                ns,
                label_selector=selector,
                propagation_policy="Foreground",
            )
            self._delete_labelled(ns, selector)
            done.append(f"deleted the Kubernetes objects of run {run_id} in {ns} (run over or unknown)")
        return done

    # placement

    def room(self, spec: JobSpec) -> str | None:
        """Room when ``num_nodes`` matching nodes each have ``resources.gpus`` allocatable GPUs
        not requested by a running or pending pod (the scheduler's own arithmetic, roughly)."""
        gpu = self.config.gpu_resource
        nodes = self._call("list the nodes", self._core().list_node).items
        pods = self._call(
            "list the pods",
            self._core().list_pod_for_all_namespaces,
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        ).items
        used: dict[str, float] = {}
        for pod in pods:
            if pod.spec.node_name:
                for c in pod.spec.containers:
                    asked = ((c.resources.requests if c.resources else None) or {}).get(gpu, "0")
                    used[pod.spec.node_name] = used.get(pod.spec.node_name, 0) + quantity(asked)
        free = []
        for node in nodes:
            labels = node.metadata.labels or {}
            if node.spec.unschedulable or any(
                labels.get(k) != v for k, v in self.config.node_selector.items()
            ):
                continue
            if not self._tolerated(node.spec.taints or []):
                continue
            have = quantity((node.status.allocatable or {}).get(gpu, "0")) - used.get(node.metadata.name, 0)
            if have >= spec.resources.gpus:
                free.append(node.metadata.name)
        if len(free) >= spec.num_nodes:
            return None
        need = f"{spec.num_nodes} node(s) with {spec.resources.gpus} free {gpu}"
        return f"{len(free)} node(s) of the pool have room; the job needs {need}"

    def _tolerated(self, taints: list[Any]) -> bool:
        for taint in taints:
            if taint.effect not in ("NoSchedule", "NoExecute"):
                continue
            if not any(
                (t.key is None or t.key == taint.key)
                and (t.effect is None or t.effect == taint.effect)
                and (t.operator == "Exists" or t.value == taint.value)
                for t in self.config.tolerations
            ):
                return False
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "context": self.config.context, "namespace": self.config.namespace}

    def describe_plan(self, spec: JobSpec) -> dict[str, Any]:
        return {
            "namespace": self.config.namespace,
            "image": self.config.image,
            "pods": spec.num_nodes,
            "resources": self._resources(spec),
            "node_selector": self.config.node_selector,
        }


def _message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]
