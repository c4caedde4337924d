"""GPUs: inventory (NVML or fake), groups, cross-process leases, NVML sampling."""
