package provisioners

import (
	"context"
	"fmt"

	"github.com/moby/moby/client"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// bridgeAddr is where nodes reach caches on the host: docker0's address for
// containers (it answers from any Docker network), the cluster network's
// gateway for VMs on the qemu bridge.
func bridgeAddr(ctx context.Context, spec Spec) (string, error) {
	if spec.Provisioner == Qemu {
		return cache.GatewayIP(spec.CIDR)
	}
	if ip, err := cache.DockerBridgeIP(); err == nil {
		return ip, nil
	}
	// docker0 is not visible from here (a remote or rootless daemon): ask
	// Docker for its default bridge's gateway.
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return "", fmt.Errorf("finding the address nodes reach the caches on: no docker0 here, and %w", err)
	}
	defer cli.Close()
	nw, err := cli.NetworkInspect(ctx, "bridge", client.NetworkInspectOptions{})
	if err != nil {
		return "", fmt.Errorf("inspecting Docker's default bridge network: %w", err)
	}
	for _, c := range nw.Network.IPAM.Config {
		if c.Gateway.IsValid() {
			return c.Gateway.String(), nil
		}
	}
	return "", fmt.Errorf("docker's default bridge network has no gateway address: %w", cache.ErrNoBridge)
}
