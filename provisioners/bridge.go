package provisioners

import (
	"context"
	"errors"
	"fmt"

	"github.com/moby/moby/client"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// bridgeAddr is where nodes reach caches on the host: docker0's address for
// containers of a rootful daemon (it answers from any Docker network), the
// host's primary address for a rootless daemon's, the cluster network's
// gateway for VMs on the qemu bridge.
//
// natted is true where every node's requests reach the caches from one of
// this host's own addresses (a rootless daemon's slirp4netns), so the
// caches cannot tell nodes apart by address.
func bridgeAddr(ctx context.Context, spec Spec) (addr string, natted bool, err error) {
	if spec.Provisioner == Qemu {
		ip, err := cache.GatewayIP(spec.CIDR)
		return ip, false, err
	}
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		// No daemon to ask (Configure needs none): docker0's, as for a
		// rootful daemon, when there is one.
		if ip, bridgeErr := cache.DockerBridgeIP(); bridgeErr == nil {
			return ip, false, nil
		}
		return "", false, fmt.Errorf("finding the address nodes reach the caches on: no docker0 here, and %w", err)
	}
	defer cli.Close()
	if ip, natted, err := dockerenv.HostAddr(ctx, cli); err == nil || !errors.Is(err, cache.ErrNoBridge) {
		return ip, natted, err
	}
	// docker0 is not visible from here (a remote daemon, or Docker
	// Desktop's VM): ask Docker for its default bridge's gateway.
	nw, err := cli.NetworkInspect(ctx, "bridge", client.NetworkInspectOptions{})
	if err != nil {
		return "", false, fmt.Errorf("inspecting Docker's default bridge network: %w", err)
	}
	for _, c := range nw.Network.IPAM.Config {
		if c.Gateway.IsValid() {
			return c.Gateway.String(), false, nil
		}
	}
	return "", false, fmt.Errorf("docker's default bridge network has no gateway address: %w", cache.ErrNoBridge)
}
