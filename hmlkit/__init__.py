"""Facts shared by the runner, the components and the policies, so none imports another."""
