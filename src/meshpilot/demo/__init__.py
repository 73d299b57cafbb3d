"""The bundled example mesh: a sample workload and a launcher for whole meshes of processes."""
