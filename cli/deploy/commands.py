"""``asyncrl deploy``: render a run config into a Slurm batch script or Kubernetes manifests.

Both validate the config and every option first (exit 2 naming what cannot work) and write
nothing until the whole rendering has succeeded; without ``--out`` the text goes to stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from asyncrl.config import ConfigError, RunConfig, load_config

app = typer.Typer(help="Render a run for a cluster: a Slurm batch script or Kubernetes manifests.",
                  no_args_is_help=True, add_completion=False)

CONFIG_HELP = "Run config (TOML), validated before anything is written."
SET_HELP = "Override any key for every process, e.g. --set learner.lr=1e-5 (repeatable)."
LEARNER_NODES_HELP = "Hosts the learner spans (sets learner.nnodes; learner.world_size must be a multiple)."


def _load(config: Path, sets: list[str], learner_nodes: int | None) -> tuple[RunConfig, list[str]]:
    """The config with the caller's overrides and --learner-nodes; also the overrides every process
    needs (the caller's and learner.nnodes; the rendezvous host is filled in by the renderer)."""
    overrides = list(sets)
    if learner_nodes is None:
        return load_config(config, overrides), overrides
    if learner_nodes < 1:
        raise ConfigError(f"--learner-nodes {learner_nodes}: expected 1 or more")
    overrides.append(f"learner.nnodes={learner_nodes}")
    placeholder = []  # validation needs some rendezvous endpoint; the renderer replaces it
    if learner_nodes > 1 and load_config(config, sets).learner.rdzv_endpoint is None:
        from cli.deploy.common import DEFAULT_RDZV_PORT

        placeholder = [f'learner.rdzv_endpoint="localhost:{DEFAULT_RDZV_PORT}"']
    return load_config(config, overrides + placeholder), overrides


def _emit(text: str, out: Path | None, what: str, next_step: str) -> None:
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {what} to {out}; {next_step}", err=True)


def _run(fn: Callable[[], None]) -> None:
    """Bad config or options: one line naming the key or option, exit 2."""
    try:
        fn()
    except ConfigError as e:
        typer.echo(f"asyncrl deploy: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def slurm(config: Path = typer.Argument(..., help=CONFIG_HELP),
          nodes: int | None = typer.Option(None, "--nodes", help="Nodes to ask for; must be the count the "
                                              "layout fills (default: that count)."),
          learner_nodes: int | None = typer.Option(None, "--learner-nodes", help=LEARNER_NODES_HELP),
          gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", help="GPUs on each node (default "
                                                      "8; 0 for CPU nodes, the default with placement.device=cpu)."),
          partition: str | None = typer.Option(None, "--partition", help="#SBATCH --partition."),
          account: str | None = typer.Option(None, "--account", help="#SBATCH --account."),
          time: str | None = typer.Option(None, "--time", help="#SBATCH --time, e.g. 12:00:00 or 2-00:00:00."),
          job_name: str = typer.Option("asyncrl", "--job-name", help="#SBATCH --job-name."),
          curve_dir: Path | None = typer.Option(None, "--curve-dir", help="Shared path of the CURVE keys "
                                                   "(created by the job when missing; default: "
                                                   "transport.curve_dir, else <run.dir>/curve)."),
          out: Path | None = typer.Option(None, "--out", help="Script file (default: stdout)."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Write an sbatch script: the learner via torchrun across its nodes, each generator and reward
    worker an srun step, addresses filled in from the allocation, CURVE keys from a shared path.
    Render it in the directory the job should run in (shared by every node)."""
    def go() -> None:
        from cli.deploy import SlurmOptions, render_slurm

        cfg, overrides = _load(config, set_, learner_nodes)
        opts = SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, account=account,
                            time=time, job_name=job_name, curve_dir=curve_dir, sets=overrides,
                            script=str(out) if out else "SCRIPT")
        text = render_slurm(cfg, config, opts)
        _emit(text, out, "the sbatch script", f"submit it with `sbatch {out}`")
    _run(go)


@app.command()
def k8s(config: Path = typer.Argument(..., help=CONFIG_HELP),
        image: str = typer.Option(..., "--image", help="Container image with asyncrl installed (`asyncrl` on PATH)."),
        namespace: str = typer.Option("default", "--namespace", help="Namespace of every object."),
        name: str = typer.Option("asyncrl", "--name", help="Prefix of every object's name."),
        learner_nodes: int | None = typer.Option(None, "--learner-nodes", help=LEARNER_NODES_HELP + " One pod each."),
        curve_secret: str | None = typer.Option(None, "--curve-secret", help="Secret holding the CURVE keys "
                                                   "(default: <name>-curve)."),
        volume_claim: str | None = typer.Option(None, "--volume-claim", help="PersistentVolumeClaim mounted at "
                                                   "--workdir in every pod (model, data, run.dir)."),
        workdir: str = typer.Option("/workspace", "--workdir", help="Containers' working directory; relative "
                                    "config paths start here."),
        out: Path | None = typer.Option(None, "--out", help="Manifest file (default: stdout)."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Write Kubernetes manifests: a ConfigMap with the run's TOML (addresses are headless-service DNS
    names, so one file holds for every pod), a StatefulSet and headless Service each for the learner,
    the generators and the reward workers; restarts are the pods' policy."""
    def go() -> None:
        from cli.deploy import K8sOptions, render_k8s

        cfg, overrides = _load(config, set_, learner_nodes)
        opts = K8sOptions(image=image, namespace=namespace, name=name, curve_secret=curve_secret,
                          volume_claim=volume_claim, workdir=workdir, sets=list(set_))
        text = render_k8s(cfg, opts)
        _emit(text, out, "the manifests", f"create the CURVE Secret (see the file's first lines), then "
                                          f"`kubectl apply -f {out}`")
    _run(go)
