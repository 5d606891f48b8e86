"""The aws target: EC2 GPU instances launched for one run, reached by SSH, never leaked.

Per attempt it picks the cheapest allowed instance type that fits the job, launches
``num_nodes`` instances (spot, on-demand, or spot then on-demand), and hands them to the same
``NodeRunner`` as the ssh target once they answer. Each instance makes its own SSH host key at
boot and cloud-init prints the public half to the instance's console; the runner reads it with
``GetConsoleOutput`` (a channel only the instance and the hypervisor write) and pins it before
the first contact, so it never accepts a key blindly and nothing private is in the user data,
which anyone allowed ``ec2:DescribeInstanceAttribute`` can read. Instances shut down into
termination, carry a watchdog that powers them off after the job (or past max_runtime), are
terminated by ``teardown`` whatever the end, and ``gc`` reaps what a dead runner left behind.
"""

from __future__ import annotations

import getpass
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmlkit.aws_prices import LIST_PRICES_USD, TAKEN
from hmlkit.errors import BackendError, HostKeyError, NoCapacityError, UsageError
from hmlkit.extras import require
from hmlkit.profile import AwsTarget
from hmlkit.ssh.hosts import SshHost
from hmlkit.ssh.pool import HostPool
from runners.backends.base import Backend, JobState, LaunchRequest, Usage
from runners.backends.nodes import NodeRunner, NodesHandle
from runners.spec import JobSpec, memory_mib
from runners.state.paths import runner_id

MANAGED = "hml:managed"
RUN_TAG = "hml:run-id"
HOME_TAG = "hml:runner"
"""Which runner (machine and state directory) launched it: ``gc`` reaps only its own."""
GONE = ("shutting-down", "terminated", "stopping", "stopped")
SPOT_REFUSED = (
    "InsufficientInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InstanceLimitExceeded",
    "Unsupported",
)
WATCHDOG_GRACE_S = 300
HOST_KEY_TYPES = ("ed25519",)
"""The host keys an instance makes at boot (cloud-init's ``ssh_genkeytypes``) and prints."""
_KEYS_BLOCK = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)
_KEY_LINE = re.compile(r"\b(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) (AAAA[0-9A-Za-z+/]+=*)")
KEY_FIX = (
    "it is not the key the instance printed to its EC2 console output at boot: something else "
    "answers at its address (a routing or security-group mistake, or an attack). The instance "
    "is terminated; check the subnet's routes and the security group, then submit again. There "
    "is nothing to trust by hand: hml reads each instance's key from its console output at launch"
)
"""What a wrong host key's message advises on aws (``hml targets trust`` does not apply)."""


@dataclass(frozen=True)
class Choice:
    instance_type: str
    gpus: int
    market: str
    price: float
    """USD per instance hour."""
    price_source: str


class AwsHandle(NodesHandle):
    instances: list[str] = []
    instance_type: str = ""
    market: str = ""
    known_hosts: str = ""
    launched_at: float = 0.0
    """When RunInstances answered: the bill counts each instance from then to its termination."""
    hourly_usd: float = 0.0
    """One instance's price per hour."""


def fits(info: dict[str, Any], spec: JobSpec) -> bool:
    """Whether an instance type (DescribeInstanceTypes' entry) holds the job's resources."""
    res = spec.resources
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    count = sum(g.get("Count", 0) for g in gpus)
    if count < res.gpus:
        return False
    if res.accelerator and not any(g.get("Name", "").lower() == res.accelerator.lower() for g in gpus):
        return False
    if res.cpus and info.get("VCpuInfo", {}).get("DefaultVCpus", 0) < res.cpus:
        return False
    if res.memory:
        if info.get("MemoryInfo", {}).get("SizeInMiB", 0) < memory_mib(res.memory):
            return False
    return True


def watchdog(remote_root: str, deadline_s: int, grace_s: int = WATCHDOG_GRACE_S, every_s: float = 30) -> str:
    """The instance's power-off watchdog (sh, run as root by cloud-init).

    It looks for live jobs' pid files under the target's ``remote_root``: an absolute one as
    is, a relative one under every home (the login user's is one of them).
    """
    rel = shlex.quote(remote_root[2:] if remote_root.startswith("~/") else remote_root)
    roots = [rel] if remote_root.startswith("/") else [f"/home/*/{rel}", f"/root/{rel}"]
    pids = " ".join(f"{r}/runs/*/*/*/pid" for r in roots)
    return f"""#!/bin/sh
# hybridml: power off (shutdown behaviour: terminate) once no hml job runs any more, or at
# max_runtime plus grace, or when no job ever started: an instance outlives no run.
start=$(date +%s); grace={grace_s}; deadline=$((start + {deadline_s}))
while sleep {every_s:g}; do
  now=$(date +%s)
  [ "$now" -ge "$deadline" ] && poweroff
  pids=$(cat {pids} 2>/dev/null)
  live=0; for p in $pids; do kill -0 "$p" 2>/dev/null && live=1; done
  if [ "$live" = 1 ]; then idle=$now; continue; fi
  [ "$now" -ge "$(( ${{idle:-$start}} + grace ))" ] && poweroff
done
"""


def user_data(authorized: str | None, spec: JobSpec, remote_root: str) -> str:
    """cloud-init ``#cloud-config``: fresh host keys printed to the console, the login's public
    key, and the power-off watchdog. Nothing secret: any principal allowed
    ``ec2:DescribeInstanceAttribute`` reads user data."""
    import yaml

    deadline = int(spec.max_runtime or 7 * 86400) + WATCHDOG_GRACE_S
    config: dict[str, Any] = {
        "ssh_deletekeys": True,  # never the image's keys: every instance makes its own
        "ssh_genkeytypes": list(HOST_KEY_TYPES),
        "ssh": {"emit_keys_to_console": True},
        "write_files": [
            {
                "path": "/usr/local/sbin/hml-watchdog",
                "permissions": "0755",
                "content": watchdog(remote_root, deadline),
            }
        ],
        "runcmd": [["sh", "-c", "nohup /usr/local/sbin/hml-watchdog >/var/log/hml-watchdog.log 2>&1 &"]],
    }
    if authorized:
        config["ssh_authorized_keys"] = [authorized]
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def console_host_keys(output: str) -> list[tuple[str, str]]:
    """The (type, base64) host keys cloud-init printed at boot: its first keys block, so a line
    printed later (by a job, as root) cannot add one; empty until the block is complete."""
    block = _KEYS_BLOCK.search(output)
    return _KEY_LINE.findall(block.group(1)) if block else []


class AwsBackend(Backend[AwsHandle]):
    kind = "aws"
    Config = AwsTarget
    handle_type = AwsHandle
    poll_interval = 1.0
    config: AwsTarget

    def __init__(self, name: str, config: AwsTarget) -> None:
        super().__init__(name, config)
        self._ec2: Any = None
        self._runners: dict[str, NodeRunner] = {}
        self._billed = 0.0
        self._billed_ids: set[str] = set()

    # -- AWS ----------------------------------------------------------------------
    @property
    def ec2(self) -> Any:
        if self._ec2 is None:
            boto3 = require("boto3", "the aws target")
            self._ec2 = boto3.client("ec2", region_name=self.config.region)
        return self._ec2

    def _call(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        """One EC2 call; its failure as BackendError naming the call and AWS's own code."""
        botocore = require("botocore.exceptions", "the aws target")
        try:
            return fn(**kw)
        except botocore.ClientError as exc:
            err = exc.response.get("Error", {})
            raise BackendError(f"aws {what}: {err.get('Code')}: {err.get('Message')}") from None
        except botocore.BotoCoreError as exc:
            raise BackendError(f"aws {what}: {exc}") from None

    def _types(self) -> list[dict[str, Any]]:
        out = self._call(
            "DescribeInstanceTypes",
            self.ec2.describe_instance_types,
            InstanceTypes=self.config.instance_types,
        )
        return list(out["InstanceTypes"])

    def _spot_price(self, instance_type: str) -> float | None:
        out = self._call(
            "DescribeSpotPriceHistory",
            self.ec2.describe_spot_price_history,
            InstanceTypes=[instance_type],
            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            MaxResults=20,
        )
        prices = [float(p["SpotPrice"]) for p in out.get("SpotPriceHistory", [])]
        return min(prices) if prices else None

    def _on_demand_price(self, instance_type: str) -> tuple[float, str]:
        if instance_type in self.config.prices:
            return self.config.prices[instance_type], "the profile's price table"
        if instance_type in LIST_PRICES_USD:
            return LIST_PRICES_USD[instance_type], f"list price of {TAKEN}"
        return 0.0, "unknown (no price in the profile or the built-in list)"

    def choose(self, spec: JobSpec, market: str | None = None) -> Choice:
        """The cheapest allowed type that fits, priced for ``market`` (default: the profile's first)."""
        market = market or ("on-demand" if self.config.market == "on-demand" else "spot")
        candidates = []
        for info in self._types():
            if not fits(info, spec):
                continue
            itype = info["InstanceType"]
            gpus = info.get("GpuInfo", {}).get("Gpus", [])
            price, source = self._on_demand_price(itype)
            if market == "spot":
                spot = self._spot_price(itype)
                if spot is not None:
                    price, source = spot, "spot price history"
            candidates.append(Choice(itype, sum(g.get("Count", 0) for g in gpus), market, price, source))
        if not candidates:
            wanted = spec.resources.model_dump(exclude_none=True)
            raise UsageError(
                f"target {self.name!r} can never run this job: no allowed instance type "
                f"({', '.join(self.config.instance_types)}) has resources {wanted}"
            )
        return min(candidates, key=lambda c: (c.price, c.instance_type))

    def describe_plan(self, spec: JobSpec) -> dict[str, Any]:
        choice = self.choose(spec)
        return {
            "instance_type": choice.instance_type,
            "market": self.config.market,
            "nodes": spec.num_nodes,
            "gpus_per_node": choice.gpus,
            "hourly_usd": round(choice.price * spec.num_nodes, 4),
            "price_source": choice.price_source,
        }

    def room(self, spec: JobSpec) -> str | None:
        running = len(self._live_instances([]))
        if running + spec.num_nodes > self.config.max_instances:
            return f"{running} hml instance(s) run, max_instances is {self.config.max_instances}"
        return None

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        from hmlkit.ssh.staging import scan

        scan(workdir, int(self.config.max_workdir_mb * 1e6))
        if spec.num_nodes > self.config.max_instances:
            raise UsageError(
                f"target {self.name!r} can never run this job: num_nodes is {spec.num_nodes}, "
                f"max_instances is {self.config.max_instances}"
            )
        choice = self.choose(spec)  # reaches AWS (NotReady when it does not answer)
        self._check_budget(spec, choice)

    def _check_budget(self, spec: JobSpec, choice: Choice) -> None:
        """Refuse a job whose worst case (max_runtime at this price) would pass the team's budget."""
        if not self.config.budget:
            return
        boto3 = require("boto3", "the aws target")
        sts = boto3.client("sts", region_name=self.config.region)
        account = self._call("GetCallerIdentity", sts.get_caller_identity)["Account"]
        budgets = boto3.client("budgets", region_name="us-east-1")
        found = self._call(
            "DescribeBudget", budgets.describe_budget, AccountId=account, BudgetName=self.config.budget
        )["Budget"]
        limit = float(found["BudgetLimit"]["Amount"])
        spend = found.get("CalculatedSpend", {})
        actual = float(spend.get("ActualSpend", {}).get("Amount", 0))
        forecast = float(spend.get("ForecastedSpend", {}).get("Amount", 0))
        hours = (spec.max_runtime or 24 * 3600) / 3600
        worst = choice.price * spec.num_nodes * hours
        if max(actual, forecast) + worst > limit:
            raise UsageError(
                f"budget {self.config.budget!r}: this job could cost up to {worst:.2f} USD "
                f"({spec.num_nodes} x {choice.instance_type} at {choice.price:.3f} USD/h for {hours:g} h); "
                f"spent {actual:.2f}, forecast {forecast:.2f}, limit {limit:.2f} USD. Lower max_runtime "
                "or num_nodes, or ask the budget's owner"
            )

    # -- launch ---------------------------------------------------------------------
    def _live_instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = self._call(
            "DescribeInstances",
            self.ec2.describe_instances,
            Filters=[
                {"Name": f"tag:{MANAGED}", "Values": ["true"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
                *filters,
            ],
        )
        return [i for r in out["Reservations"] for i in r["Instances"]]

    def _tags(self, request: LaunchRequest) -> list[dict[str, str]]:
        tags = {
            **self.config.tags,
            MANAGED: "true",
            RUN_TAG: request.run_id,
            "hml:attempt": str(request.attempt),
            "hml:user": getpass.getuser(),
            "hml:job": request.spec.name,
            HOME_TAG: runner_id(),
            "Name": f"hml-{request.spec.name}-{request.run_id[:8]}",
        }
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _run_instances(self, request: LaunchRequest, choice: Choice, data: str) -> list[str]:
        botocore = require("botocore.exceptions", "the aws target")
        cfg = self.config
        args: dict[str, Any] = {
            "MinCount": request.spec.num_nodes,
            "MaxCount": request.spec.num_nodes,
            "InstanceType": choice.instance_type,
            "SubnetId": cfg.subnets[request.attempt % len(cfg.subnets)],
            "UserData": data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": self._tags(request)},
                {"ResourceType": "volume", "Tags": self._tags(request)},
            ],
        }
        if cfg.launch_template:
            args["LaunchTemplate"] = {
                "LaunchTemplateId": cfg.launch_template,
                "Version": cfg.launch_template_version,
            }
        else:
            args["ImageId"] = cfg.ami
        if cfg.security_group:
            args["SecurityGroupIds"] = [cfg.security_group]
        if cfg.key_name:
            args["KeyName"] = cfg.key_name
        if cfg.placement_group and request.spec.num_nodes > 1:
            args["Placement"] = {"GroupName": cfg.placement_group}
        if choice.market == "spot":
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        try:
            out = self.ec2.run_instances(**args)
        except botocore.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if choice.market == "spot" and code in SPOT_REFUSED:
                raise NoCapacityError(f"spot refused: {code}: {message}") from None
            raise BackendError(f"aws RunInstances: {code}: {message}") from None
        except botocore.BotoCoreError as exc:
            raise BackendError(f"aws RunInstances: {exc}") from None
        return [i["InstanceId"] for i in out["Instances"]]

    def launch(self, request: LaunchRequest) -> tuple[AwsHandle, Usage]:
        spec = request.spec
        busy = self.room(spec)
        if busy:
            raise NoCapacityError(f"target {self.name!r}: {busy}")
        # a launch cut short by a dead supervisor may have left this attempt's instances
        self._terminate(
            [
                i["InstanceId"]
                for i in self._live_instances([{"Name": f"tag:{RUN_TAG}", "Values": [request.run_id]}])
            ]
        )
        authorized = None
        if self.config.identity_file:
            pub = Path(str(Path(self.config.identity_file).expanduser()) + ".pub")
            if pub.is_file():
                authorized = pub.read_text().strip()
        data = user_data(authorized, spec, self.config.remote_root)
        choice = self.choose(spec)
        try:
            ids = self._run_instances(request, choice, data)
        except NoCapacityError:
            if self.config.market != "spot-then-on-demand":
                raise
            choice = self.choose(spec, "on-demand")
            ids = self._run_instances(request, choice, data)
        handle = AwsHandle(
            instances=ids,
            instance_type=choice.instance_type,
            market=choice.market,
            launched_at=time.time(),
            hourly_usd=choice.price,
        )
        try:
            deadline = time.monotonic() + self.config.boot_timeout
            addresses = self._wait_running(ids, deadline)
            keys = self._wait_host_keys(ids, deadline)
            known = request.state_dir / f"attempt-{request.attempt}-known_hosts"
            port = self.config.ssh_port
            known.write_text(
                "".join(
                    f"{a if port == 22 else f'[{a}]:{port}'} {keytype} {blob}\n"
                    for a, iid in zip(addresses, ids, strict=True)
                    for keytype, blob in keys[iid]
                )
            )
            handle.known_hosts = str(known)
            hosts = [
                SshHost(
                    address=a,
                    port=port,
                    user=self.config.ssh_user,
                    identity_file=self.config.identity_file,
                    gpus=choice.gpus,
                )
                for a in addresses
            ]
            self._wait_ssh(self._pool(handle), hosts, deadline)
            started = self._nodes(handle).start(request, hosts)
        except BaseException:
            self._release(handle)
            raise
        handle.nodes = started.nodes
        usage = Usage(
            nodes=spec.num_nodes,
            gpus_per_node=choice.gpus,
            node_hour_usd=choice.price,
            hosts=[
                f"{i} ({a}, {choice.instance_type} {choice.market})"
                for i, a in zip(ids, addresses, strict=True)
            ],
            data_bytes=started.data_bytes(),
            data_streamed=started.data_streamed(),
        )
        return handle, usage

    def run_tags(self, handle: AwsHandle) -> dict[str, str]:
        return {
            "hml.instance_ids": ",".join(handle.instances),
            "hml.instance_type": handle.instance_type,
            "hml.market": handle.market,
        }

    def take_billed_usd(self) -> float:
        billed, self._billed = self._billed, 0.0
        return round(billed, 6)

    def _release(self, handle: AwsHandle) -> None:
        """Terminate the attempt's instances and bill each once, from launch to now."""
        self._terminate(handle.instances)
        now = time.time()
        for iid in handle.instances:
            if iid not in self._billed_ids and handle.launched_at:
                self._billed_ids.add(iid)
                self._billed += handle.hourly_usd * max(now - handle.launched_at, 0.0) / 3600

    def _describe(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out = self._call("DescribeInstances", self.ec2.describe_instances, InstanceIds=ids)
        return {i["InstanceId"]: i for r in out["Reservations"] for i in r["Instances"]}

    def _wait_running(self, ids: list[str], deadline: float) -> list[str]:
        while True:
            found = self._describe(ids)
            states = {i: found[i]["State"]["Name"] for i in ids if i in found}
            if any(s in GONE for s in states.values()):
                raise BackendError(f"instance terminated while booting ({states})")
            if all(states.get(i) == "running" and found[i].get("PrivateIpAddress") for i in ids):
                return [found[i]["PrivateIpAddress"] for i in ids]
            if time.monotonic() > deadline:
                raise BackendError(f"instances not running after {self.config.boot_timeout:g} s: {states}")
            time.sleep(1.0)

    def _wait_host_keys(self, ids: list[str], deadline: float) -> dict[str, list[tuple[str, str]]]:
        """Each instance's host keys, once cloud-init has printed them to its console output.

        ``Latest``: the console as it is now (instances on the Nitro hypervisor: every GPU type
        from g4dn on), not the copy EC2 posts after a state change, which may predate the keys.
        """
        keys: dict[str, list[tuple[str, str]]] = {}
        while True:
            for iid in ids:
                if iid not in keys:
                    out = self._call(
                        "GetConsoleOutput", self.ec2.get_console_output, InstanceId=iid, Latest=True
                    )
                    found = console_host_keys(out.get("Output") or "")
                    if found:
                        keys[iid] = found
            if len(keys) == len(ids):
                return keys
            if time.monotonic() > deadline:
                missing = ", ".join(i for i in ids if i not in keys)
                raise BackendError(
                    f"no SSH host key in the console output of {missing} after "
                    f"{self.config.boot_timeout:g} s: the image must run cloud-init with "
                    "ssh.emit_keys_to_console (the default of Ubuntu and Amazon Linux images)"
                )
            time.sleep(2.0)

    def _wait_ssh(self, pool: HostPool, hosts: list[SshHost], deadline: float) -> None:
        """Until every instance's sshd answers with the key it printed (boot takes a while)."""
        for host in hosts:
            while True:
                try:
                    pool.client(host)
                    break
                except HostKeyError:
                    raise  # not the key the instance printed: never accepted
                except BackendError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)

    def _pool(self, handle: AwsHandle) -> HostPool:
        return self._nodes(handle).pool

    def _nodes(self, handle: AwsHandle) -> NodeRunner:
        """One runner per attempt's known_hosts, kept: it holds the nodes' output streams."""
        if handle.known_hosts not in self._runners:
            pool = HostPool(
                handle.known_hosts,
                self.config.connect_timeout,
                self.name,
                self.config.remote_root,
                key_fix=KEY_FIX,
            )
            self._runners[handle.known_hosts] = NodeRunner(
                pool, int(self.config.max_workdir_mb * 1e6), tracking_via=self.config.tracking_via
            )
        return self._runners[handle.known_hosts]

    def _terminate(self, ids: list[str]) -> None:
        if ids:
            self._call("TerminateInstances", self.ec2.terminate_instances, InstanceIds=ids)

    # -- following ------------------------------------------------------------------
    def _gone(self, handle: AwsHandle) -> list[str]:
        """The handle's instances that are terminated or on their way (spot interruption, loss)."""
        found = self._describe(handle.instances)
        return sorted(i for i in handle.instances if i not in found or found[i]["State"]["Name"] in GONE)

    def poll(self, handle: AwsHandle) -> JobState:
        gone = self._gone(handle)
        if gone:
            try:
                self._nodes(handle).cancel(handle)  # what runs on the other nodes stops too
            except BackendError:
                pass
            return JobState(False, None, f"instance terminated ({', '.join(gone)})")
        return self._nodes(handle).poll(handle)

    def read_output(self, handle: AwsHandle) -> bytes:
        try:
            return self._nodes(handle).read_output(handle)
        except BackendError:
            if self._gone(handle):
                return b""  # the instance is gone with its output; poll says so
            raise

    def cancel(self, handle: AwsHandle) -> None:
        try:
            self._nodes(handle).cancel(handle)
        finally:
            self._release(handle)

    def teardown(self, handle: AwsHandle) -> None:
        self._release(handle)

    def gc(self, is_live: Callable[[str], bool]) -> list[str]:
        """Terminate this runner's instances whose run is over or unknown here; what was done."""
        reaped = []
        for inst in self._live_instances([{"Name": f"tag:{HOME_TAG}", "Values": [runner_id()]}]):
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            run_id = tags.get(RUN_TAG, "")
            if not is_live(run_id):
                self._terminate([inst["InstanceId"]])
                reaped.append(f"terminated {inst['InstanceId']} of run {run_id or '?'} (run over or unknown)")
        return reaped

    def close(self) -> None:
        for runner in self._runners.values():
            runner.pool.close()
        self._runners.clear()
