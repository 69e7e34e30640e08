"""``asyncrl deploy``: render a run's config into a Slurm batch script or Kubernetes manifests.

Nothing here starts a process; each renderer validates its options against the config
(raising :class:`DeployError`, exit 2, naming the option or key) and returns text::

    cfg = load_config("run.toml")
    script = render_slurm(cfg, Path("run.toml"), SlurmOptions(gpus_per_node=8))
    manifests = render_k8s(cfg, K8sOptions(image="registry/asyncrl:0.1"))

The templates live in ``cli/deploy/templates`` (package data); docs/deploy.md has a
worked example of each.
"""

from cli.deploy.common import DeployError
from cli.deploy.k8s import K8sOptions, render_k8s
from cli.deploy.slurm import SlurmOptions, render_slurm

__all__ = ["DeployError", "K8sOptions", "SlurmOptions", "render_k8s", "render_slurm"]
