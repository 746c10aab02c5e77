package main

import (
	"context"
	"errors"
	"time"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// dockerNodeAddr is where containers of the Docker daemon DOCKER_HOST names
// reach this host, and why: a rootless daemon's at this host's primary
// address (docker0's address, inside its namespace, is its own bridge), a
// rootful daemon's at docker0's. Without docker0 and without a rootless
// daemon that answers (Docker Desktop's VM, a remote daemon), there is no
// address this host can vouch for: addr is "" and why says what to do.
func dockerNodeAddr(ctx context.Context) (addr, why string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if cli, err := dockerenv.Client(ctx); err == nil {
		ip, natted, err := dockerenv.HostAddr(ctx, cli)
		host := cli.DaemonHost()
		_ = cli.Close()
		switch {
		case err == nil && natted:
			return ip, "its primary address (the Docker daemon at " + host + " is rootless: its containers reach the host there, not at docker0)"
		case err == nil:
			return ip, "docker0's"
		case !errors.Is(err, cache.ErrNoBridge):
			return "", err.Error() + "; name the address with --bridge, or run the caches on the cluster's network with up --detach --network"
		}
	}
	if ip, err := cache.DockerBridgeIP(); err == nil {
		return ip, "docker0's"
	}
	return "", "no docker0 here (Docker Desktop, Colima or a remote daemon?): run the caches on the cluster's network with up --detach --network NAME --cidr CIDR, or name the address nodes reach this host at with --bridge"
}
