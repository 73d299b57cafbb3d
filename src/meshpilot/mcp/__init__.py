"""Istio's Mesh Configuration Protocol over xDS: config resources as xDS resources."""
