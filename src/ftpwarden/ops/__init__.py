"""Operations: metrics, the status page, who/kick over the control socket, sd_notify, upload hooks, quotas."""
