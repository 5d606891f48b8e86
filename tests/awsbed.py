"""A stand-in AWS for the aws target: a real moto server process, and instances that boot.

Why this shape: no cloud account exists here, and moto is the stand-in the world forces for
AWS's APIs; everything past the API is real. A VPC and subnet on a loopback /24 of the bed's
own give each instance a loopback private address (moto hands out .4, .5, ... in launch
order); the /24 follows from the moto server's port, so beds running at once (pytest workers,
other checkouts) never bind the same address.
The ``Booter`` plays cloud-init: it watches moto for new instances, reads each one's user
data, makes the instance's own host key, starts a real sshd (a host of tests/sshbed.py) on
the instance's address with that key and the authorized login key found in the user data,
and prints the public key to the instance's console output as cloud-init does. The console
is the one thing an API client cannot write: moto runs with a back door for it
(tests/motoserver.py), standing in for the hypervisor. So the runner's host-key handling is
tested for real, including an impostor: for a job named in ``AwsBed.impostor_jobs`` the sshd
answers with another key than the one printed. An instance terminated in moto (by the runner,
or by a test playing a spot interruption) dies whole: its sshd and every process started
through it.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sshbed import Host, _keygen

REGION = "eu-west-1"


def cidr(port: int) -> str:
    """The bed's own loopback /24: one per moto port, so no two live beds share an address."""
    return f"127.{port >> 8}.{port & 255}.0/24"


@dataclass
class AwsBed:
    root: Path
    endpoint: str
    subnet: str
    launch_template: str
    identity_file: Path
    remote_root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    impostor_jobs: set[str] = field(default_factory=set)
    """Jobs (``hml:job`` tag) whose instances' sshd answers with a key other than the printed one."""
    user_data: dict[str, str] = field(default_factory=dict)
    """Each booted instance's user data, as the instance read it."""
    runner_env: dict[str, str] = field(default_factory=dict)
    """With IAM enforced: the credentials of the user holding only the runner's policy."""

    @property
    def console(self) -> Path:
        """What each instance printed to its console, by instance id (tests/motoserver.py)."""
        return self.root / "console"

    def ec2(self) -> Any:
        import boto3

        return boto3.client("ec2", region_name=REGION, endpoint_url=self.endpoint)

    def target(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "aws",
            "region": REGION,
            "launch_template": self.launch_template,
            "subnets": [self.subnet],
            "instance_types": ["g4dn.xlarge", "g5.xlarge"],
            "ssh_user": getpass.getuser(),
            "identity_file": str(self.identity_file),
            "remote_root": str(self.remote_root),
            "tags": {"team": "ml", "cost-center": "cc-1"},
            "boot_timeout": 60,
            **extra,
        }

    def instances(
        self, run_id: str | None = None, states: tuple[str, ...] = ("pending", "running")
    ) -> list[dict]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}]
        if run_id:
            filters.append({"Name": "tag:hml:run-id", "Values": [run_id]})
        out = self.ec2().describe_instances(Filters=filters)
        return [i for r in out["Reservations"] for i in r["Instances"]]

    def tagged_running(self) -> list[str]:
        """Every instance hml tagged that still runs: each scenario ends expecting none."""
        return [
            i["InstanceId"]
            for i in self.instances()
            if any(t["Key"] == "hml:managed" for t in i.get("Tags", []))
        ]


class Booter(threading.Thread):
    """cloud-init for moto's instances: sshd up on boot, everything down on termination."""

    def __init__(self, bed: AwsBed) -> None:
        super().__init__(daemon=True)
        self.bed = bed
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        ec2 = self.bed.ec2()
        while not self.stop.wait(0.2):
            try:
                out = ec2.describe_instances()
                for inst in (i for r in out["Reservations"] for i in r["Instances"]):
                    self._step(ec2, inst)
            except Exception as exc:  # noqa: BLE001 - reported by the fixture, not swallowed
                self.errors.append(repr(exc))

    def _step(self, ec2: Any, inst: dict) -> None:
        iid, state = inst["InstanceId"], inst["State"]["Name"]
        host = self.bed.hosts.get(iid)
        if state in ("pending", "running") and host is None and inst.get("PrivateIpAddress"):
            data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            raw = data.get("UserData", {}).get("Value")
            if raw:
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                impostor = tags.get("hml:job") in self.bed.impostor_jobs
                text = base64.b64decode(raw).decode()
                self.bed.user_data[iid] = text
                self.bed.hosts[iid] = self._boot(iid, inst["PrivateIpAddress"], text, impostor)
        elif state not in ("pending", "running") and host is not None and host.alive():
            host.kill()

    def _boot(self, iid: str, address: str, user_data: str, impostor: bool) -> Host:
        config = yaml.safe_load(user_data)
        assert user_data.startswith("#cloud-config\n"), "not cloud-init's own format"
        assert config["ssh"]["emit_keys_to_console"] and config["ssh_deletekeys"]
        directory = self.bed.root / iid
        directory.mkdir(parents=True)
        host = Host(
            name=iid,
            address=address,
            port=22,
            user=getpass.getuser(),
            identity_file=self.bed.identity_file,
            remote_root=self.bed.remote_root,
            marker=uuid.uuid4().hex,
            dir=directory,
        )
        _keygen(host.host_key, f"root@{iid}")  # ssh_genkeytypes: [ed25519]
        printed = host.host_key.with_name(host.host_key.name + ".pub")
        if impostor:  # the instance prints its key, but another sshd answers at its address
            printed = directory / "printed_ed25519_key.pub"
            _keygen(printed.with_suffix(""), f"root@{iid}")
        authorized = directory / "authorized_keys"
        authorized.write_text("\n".join(config.get("ssh_authorized_keys", [])) + "\n")
        host.write_config(authorized)
        host.start()
        self.bed.console.mkdir(exist_ok=True)
        (self.bed.console / iid).write_text(  # cloud-init's keys-to-console, as on EC2
            "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
            f"ec2: 256 {host.fingerprint()} root@{iid} (ED25519)\n"
            "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n"
            f"-----BEGIN SSH HOST KEY KEYS-----\n{printed.read_text()}-----END SSH HOST KEY KEYS-----\n"
        )
        return host


def _enforce_iam(endpoint: str, policy: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Make an admin (the bed and the tests) and a user holding only ``policy`` (the runner),
    then turn IAM enforcement on: every later request is checked against its signer's policies.
    The two users' credentials as AWS_* variables: (admin, runner)."""
    from urllib.request import Request, urlopen

    import boto3

    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint)
    creds = []
    admin = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    for user, document in (("bed-admin", admin), ("hml-runner", policy)):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        creds.append(
            {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        )
    enforce = Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urlopen(enforce, timeout=30):  # noqa: S310 - moto on loopback
        pass  # from now on nothing is unauthenticated
    return creds[0], creds[1]


def _fresh_boto3_session() -> None:
    """boto3's default session keeps the first credentials it found; make it read them again."""
    import boto3

    boto3.setup_default_session()


@contextmanager
def running_aws_bed(root: Path, iam_policy: dict[str, Any] | None = None) -> Iterator[AwsBed]:
    """moto server, network, launch template and booter under ``root``; AWS_* env set meanwhile.

    ``iam_policy``: enforce IAM, the bed and the tests acting as an admin, and
    ``AwsBed.runner_env`` naming a user that holds only this policy.
    """
    from tests.conftest import BIN, free_port, wait_http

    port = free_port()
    log = open(root / "moto.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "python"), str(Path(__file__).with_name("motoserver.py")), str(root),
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    booter: Booter | None = None
    bed: AwsBed | None = None
    try:  # whatever fails while setting up, the server goes with it
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            wait_http(f"{endpoint}/moto-api/", proc=proc)
            runner_env: dict[str, str] = {}
            if iam_policy is not None:
                admin, runner_env = _enforce_iam(endpoint, iam_policy)
                for key, value in admin.items():
                    mp.setenv(key, value)
                _fresh_boto3_session()
            identity = root / "id_ed25519"
            subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(identity)], check=True)
            bed = AwsBed(root, endpoint, "", "", identity, root / "instances-root", runner_env=runner_env)
            bed.remote_root.mkdir()
            ec2 = bed.ec2()
            vpc = ec2.create_vpc(CidrBlock=cidr(port))["Vpc"]["VpcId"]
            bed.subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr(port))["Subnet"]["SubnetId"]
            bed.launch_template = ec2.create_launch_template(
                LaunchTemplateName="hml-gpu", LaunchTemplateData={"ImageId": "ami-12c6146b"}
            )["LaunchTemplate"]["LaunchTemplateId"]
            booter = Booter(bed)
            booter.start()
            yield bed
    finally:
        if booter is not None:
            booter.stop.set()
            booter.join(timeout=10)
        for host in bed.hosts.values() if bed else []:
            if host.alive() or host.processes():
                host.kill()
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
        if iam_policy is not None:
            _fresh_boto3_session()  # the admin's keys mean nothing to the next server
    assert booter is not None and not booter.errors, booter and booter.errors


@pytest.fixture(scope="session")
def aws_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsBed]:
    with running_aws_bed(tmp_path_factory.mktemp("awsbed")) as bed:
        yield bed


def wait_gone(bed: AwsBed, timeout: float = 30) -> list[str]:
    """The instances hml tagged that still run after ``timeout`` (expected: none)."""
    deadline = time.monotonic() + timeout
    while (left := bed.tagged_running()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


class SpotRefusingProxy(threading.Thread):
    """A fault in the AWS stand-in, never in our code: EC2 refuses every spot launch.

    An HTTP proxy in front of moto that answers ``InsufficientInstanceCapacity`` to
    ``RunInstances`` calls asking for the spot market and forwards everything else.
    """

    ERROR = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        "<Code>InsufficientInstanceCapacity</Code><Message>There is no Spot capacity available "
        "that matches your request.</Message></Error></Errors><RequestID>fault</RequestID></Response>"
    )

    def __init__(self, upstream: str) -> None:
        super().__init__(daemon=True)
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs
        from urllib.request import Request, urlopen

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = parse_qs(body.decode(errors="replace"))
                if form.get("Action") == ["RunInstances"] and form.get(
                    "InstanceMarketOptions.MarketType"
                ) == ["spot"]:
                    proxy.refused += 1
                    return self._reply(400, proxy.ERROR.encode(), "text/xml")
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                req = Request(upstream + self.path, data=body or None, headers=headers, method=self.command)
                try:
                    with urlopen(req, timeout=60) as resp:  # noqa: S310 - moto on loopback
                        self._reply(resp.status, resp.read(), resp.headers.get("Content-Type", ""))
                except Exception as exc:  # noqa: BLE001 - an HTTP error status is forwarded as is
                    status = getattr(exc, "code", 502)
                    data = exc.read() if hasattr(exc, "read") else str(exc).encode()
                    self._reply(status, data, "text/xml")

            def _reply(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        self.refused = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
