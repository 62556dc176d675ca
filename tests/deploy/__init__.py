"""Tests of the deployment files (deploy/): Dockerfile, Kubernetes manifests."""
