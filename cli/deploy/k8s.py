"""``asyncrl deploy k8s``: Kubernetes manifests for a run.

One ConfigMap holds the run's TOML, the same for every pod: its addresses are the pods'
headless-service DNS names (``<name>-learner-0.<name>-learner:5555``). The learner,
the generators and the reward workers are a StatefulSet each, behind a headless Service; a pod
takes its index (``--index``, ``--node-rank``) from its ordinal, the suffix of its host name.
Restarts are the pods' policy: a restarted generator rejoins the weight-sync group, the learner
re-dispatches what a dead worker held. CURVE keys come from a Secret mounted as a directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from asyncrl.config import RunConfig
from asyncrl.placement import APPLIED
from cli.deploy.common import DeployError, check_config, check_ports, learner_ports, needs, port, rdzv_port, render
from cli.deploy.toml_text import config_toml

CONFIG_DIR = "/etc/asyncrl"
CURVE_DIR = "/etc/asyncrl-curve"
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Secret keys cannot hold "/": authorized/client.key is stored as authorized-client.key.
CURVE_FILES = {"server.key": "server.key", "server.key_secret": "server.key_secret", "client.key": "client.key",
               "client.key_secret": "client.key_secret", "authorized-client.key": "authorized/client.key"}


@dataclass
class K8sOptions:
    image: str
    namespace: str = "default"
    name: str = "asyncrl"  # prefix of every object: <name>-learner, <name>-rollout, <name>-reward
    curve_secret: str | None = None  # None: <name>-curve
    volume_claim: str | None = None  # a PersistentVolumeClaim mounted at workdir (model, data, run.dir)
    workdir: str = "/workspace"  # the containers' working directory; relative config paths start here
    sets: list[str] = field(default_factory=list)  # the caller's --set overrides (already in cfg)


def render_k8s(cfg: RunConfig, opts: K8sOptions) -> str:
    """All manifests as one multi-document YAML text; raises DeployError naming what cannot work."""
    check_config(cfg, opts.sets, "k8s")
    _check_options(opts)
    check_ports(learner_ports(cfg), "the learner pod")
    secret = opts.curve_secret or f"{opts.name}-curve"
    cfg = _with_addresses(cfg, opts.name)
    gpu = cfg.placement.device != "cpu"
    common = {"namespace": opts.namespace, "image": json.dumps(opts.image), "workdir": json.dumps(opts.workdir),
              "mounts": json.dumps(_mounts(opts)), "volumes": json.dumps(_volumes(opts, secret)),
              "env": json.dumps([{"name": APPLIED, "value": "1"}] if gpu else [])}
    header = render("k8s_config.yaml", {
        "summary": _summary(cfg), "secret": secret, "namespace": opts.namespace, "config_map": f"{opts.name}-config",
        "labels": json.dumps(_labels(opts.name, "config")),
        "toml": "\n".join(f"    {line}" if line else "" for line in config_toml(cfg).splitlines()),
    })
    return header + "".join(render("k8s_role.yaml", {**common, **role}) for role in _roles(cfg, opts.name, gpu))


def _check_options(opts: K8sOptions) -> None:
    for key, value, longest in (("--name", opts.name, 40), ("--namespace", opts.namespace, 63),
                                ("--curve-secret", opts.curve_secret, 63), ("--volume-claim", opts.volume_claim, 63)):
        if value is not None and (not _DNS_LABEL.fullmatch(value) or len(value) > longest):
            raise DeployError(f"{key} {value!r}: expected lowercase letters, digits and '-', starting with a "
                              f"letter, at most {longest} characters")
    if not opts.image.strip() or any(c.isspace() for c in opts.image):
        raise DeployError(f"--image {opts.image!r}: expected an image reference such as registry/asyncrl:0.1")
    if not opts.workdir.startswith("/"):
        raise DeployError(f"--workdir {opts.workdir!r}: expected an absolute path in the container")


def _dns(name: str, role: str, ordinal: int) -> str:
    return f"{name}-{role}-{ordinal}.{name}-{role}"


def _with_addresses(cfg: RunConfig, name: str) -> RunConfig:
    """The config every pod reads: learner pod 0 and reward pod j named by DNS, binds on all interfaces."""
    t, head = cfg.transport, _dns(name, "learner", 0)
    transport = t.model_copy(update={
        "dispatch": f"{head}:{port(t.dispatch)}", "trajectories": f"{head}:{port(t.trajectories)}",
        "bind_host": "0.0.0.0", "curve_dir": CURVE_DIR,
        "rewards": [f"{_dns(name, 'reward', j)}:{port(a)}" for j, a in enumerate(t.rewards)]})
    learner = cfg.learner
    if learner.nnodes > 1:
        learner = learner.model_copy(update={"rdzv_endpoint": f"{head}:{rdzv_port(cfg)}"})
    weight_sync = cfg.weight_sync.model_copy(update={"address": f"{head}:{port(cfg.weight_sync.address)}"})
    return cfg.model_copy(update={"transport": transport, "learner": learner, "weight_sync": weight_sync})


def _summary(cfg: RunConfig) -> str:
    lr, ro = cfg.learner, cfg.rollout
    return (f"learner {lr.world_size} rank(s) on {lr.nnodes} pod(s), {ro.num_generators} generator(s) "
            f"(tensor_parallel_size {ro.tensor_parallel_size}), {cfg.reward.num_workers} reward worker(s) "
            f"({cfg.reward.type}).")


def _labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "asyncrl", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": component}


def _roles(cfg: RunConfig, name: str, gpu: bool) -> list[dict[str, object]]:
    """Placeholder values of the learner, rollout and reward StatefulSets."""
    need, lr = needs(cfg, gpu), cfg.learner
    ordinal = '"${HOSTNAME##*-}"'  # a StatefulSet pod's host name ends in -<ordinal>
    cmd = f"asyncrl {{}} {CONFIG_DIR}/run.toml"
    learner_cmd = cmd.format("learner") + (f" --node-rank {ordinal}" if lr.nnodes > 1 else "")
    # Success leaves the container idle, so the pod policy does not start a finished run over.
    learner_cmd += " && echo 'asyncrl: run finished' && exec sleep 2147483647"
    cmd = "exec " + cmd
    rewards = sorted({port(a) for a in cfg.transport.rewards})
    roles = [
        ("learner", lr.nnodes, learner_cmd, need.learner_per_node, learner_ports(cfg),
         f"learner: {lr.world_size} rank(s), {need.learner_per_node} per pod; pod 0 binds every learner address"),
        ("rollout", cfg.rollout.num_generators, cmd.format("rollout") + f" --index {ordinal}", need.generator, {},
         "generators: pod I runs `asyncrl rollout --index I`"),
        ("reward", cfg.reward.num_workers, cmd.format("reward") + f" --index {ordinal}", need.reward,
         {f"reward-{p}": p for p in rewards},
         "reward workers: pod J runs `asyncrl reward --index J` and binds transport.rewards[J]"),
    ]
    out = []
    for role, replicas, script, gpus, ports, comment in roles:
        named = [{"name": _port_name(key), "port": p} for key, p in ports.items()]
        out.append({"name": f"{name}-{role}", "role": role, "replicas": replicas, "comment": comment,
                    "labels": json.dumps(_labels(name, role)), "script": json.dumps(script),
                    "service_ports": json.dumps([{**n, "targetPort": n["port"]} for n in named]),
                    "container_ports": json.dumps([{"name": n["name"], "containerPort": n["port"]} for n in named]),
                    "resources": json.dumps({"limits": {"nvidia.com/gpu": gpus}} if gpus else {})})
    return out


def _port_name(key: str) -> str:
    """A port name Kubernetes accepts (at most 15 characters): weight_sync.address -> weight-sync."""
    key = "weight_sync" if key == "weight_sync.address" else key
    short = key.split(".")[-1].replace("_", "-").replace("[", "-").rstrip("]")
    return "rdzv" if short == "rdzv-endpoint" else short[:15]


def _mounts(opts: K8sOptions) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
           {"name": "curve", "mountPath": CURVE_DIR, "readOnly": True},
           {"name": "dshm", "mountPath": "/dev/shm"}]
    if opts.volume_claim:
        out.append({"name": "work", "mountPath": opts.workdir})
    return out


def _volumes(opts: K8sOptions, secret: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [
        {"name": "config", "configMap": {"name": f"{opts.name}-config"}},
        {"name": "curve", "secret": {"secretName": secret,
                                     "items": [{"key": k, "path": p} for k, p in CURVE_FILES.items()]}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # vLLM and torch need more than the 64 MiB default
    ]
    if opts.volume_claim:
        out.append({"name": "work", "persistentVolumeClaim": {"claimName": opts.volume_claim}})
    return out
