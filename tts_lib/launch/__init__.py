"""The bundle on its machine: where the bundle lives and what setup.sh prepared, downloads, the environment check,
the notebook kernel and git filter, and the demo."""
