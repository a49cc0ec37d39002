"""The XRayVision Kubernetes operator (kopf): XRayVision and ModelEndpoint resources into
Deployments, Services, an Ingress, a migration Job and a managed vLLM server."""
