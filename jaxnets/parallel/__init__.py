"""Device meshes, shardings and multi-host set-up."""
