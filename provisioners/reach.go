package provisioners

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// ErrMirrorUnreachable means a mirror does not answer from the network the
// nodes would pull on: with it, containerd falls back to the registry
// itself (or, with skipFallback, the boot fails), and the caches see none of
// the pulls.
var ErrMirrorUnreachable = errors.New("mirror does not answer from the nodes' network")

// The tiny program run on the cluster's network to ask each mirror for
// /v2/, as a node would, and the repository of its image.
const (
	probePackage    = "github.com/pullthrough/pullthrough/internal/tools/mirrorprobe"
	probeRepository = "pullthrough.local/mirror-probe"
)

const labelProbe = "pullthrough.probe"

// ensureNetwork makes the cluster's network as Talos's docker provisioner
// makes it (name, labels, CIDR, MTU), which the provisioner then reuses; one
// that exists already is kept.
func ensureNetwork(ctx context.Context, cli *client.Client, p *Plan) error {
	req := p.Configs.ClusterRequest
	// By label, as Talos looks for it: Docker 20.10 does not keep network
	// names unique, so a second create would be a second network.
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", labelCluster+"="+p.Spec.Name)})
	if err != nil {
		return fmt.Errorf("cluster %q: listing its networks: %w", p.Spec.Name, err)
	}
	if len(nets.Items) > 0 {
		return nil
	}
	opts := client.NetworkCreateOptions{
		Labels: map[string]string{"talos.owned": "true", labelCluster: p.Spec.Name},
		IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: req.Network.CIDRs[0]}}},
		Options: map[string]string{
			"com.docker.network.driver.mtu": strconv.Itoa(req.Network.MTU),
		},
	}
	if _, err := cli.NetworkCreate(ctx, p.Spec.Name, opts); err != nil && !cerrdefs.IsConflict(err) {
		return fmt.Errorf("cluster %q: creating its network: %w", p.Spec.Name, err)
	}
	return nil
}

// checkReach asks every mirror for GET /v2/ from the cluster's own Docker
// network before any node exists, so that a cluster is never created behind
// a mirror its nodes cannot reach. The network is made as Talos's docker
// provisioner makes it (name, labels, CIDR, MTU), which it then reuses; on
// failure it is removed again.
func checkReach(ctx context.Context, p *Plan, log io.Writer) (err error) {
	if p.Spec.Provisioner != Docker || len(p.Mirrors) == 0 {
		return nil
	}
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	name := p.Spec.Name
	req := p.Configs.ClusterRequest
	if err := ensureNetwork(ctx, cli, p); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// Nodes will not be made: the network (and in-network caches
			// on it) go, by label.
			_ = dockerenv.RemoveContainersByLabel(context.WithoutCancel(ctx), cli, labelCluster, name)
			_ = dockerenv.RemoveNetworksByLabel(context.WithoutCancel(ctx), cli, labelCluster, name)
		}
	}()
	tag, err := dockerenv.BuildToolImage(ctx, cli, probePackage, probeRepository, "mirrorprobe", log)
	if err != nil {
		return fmt.Errorf("cluster %q: building the mirror probe: %w", name, err)
	}
	hosts := make([]string, 0, len(p.Mirrors))
	for h := range p.Mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	args := make([]string, 0, len(hosts))
	for _, h := range hosts {
		args = append(args, h+"="+p.Mirrors[h])
	}
	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: tag, Cmd: args, Labels: map[string]string{labelProbe: name}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(name)},
	})
	if err != nil {
		return fmt.Errorf("cluster %q: creating the mirror probe: %w", name, err)
	}
	defer func() {
		_, _ = cli.ContainerRemove(context.WithoutCancel(ctx), created.ID, client.ContainerRemoveOptions{Force: true})
	}()
	if _, err := cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("cluster %q: starting the mirror probe: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Duration(len(hosts))*4*time.Second+10*time.Second)
	defer cancel()
	code, err := dockerenv.WaitExit(wctx, cli, created.ID)
	if err != nil {
		return fmt.Errorf("cluster %q: waiting for the mirror probe: %w", name, err)
	}
	logs, err := dockerenv.ContainerLogs(ctx, cli, created.ID)
	if err != nil {
		return fmt.Errorf("cluster %q: reading the mirror probe: %w", name, err)
	}
	var failed []string
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if rest, ok := strings.CutPrefix(line, "fail "); ok {
			failed = append(failed, rest)
		}
	}
	if code == 0 && len(failed) == 0 {
		return nil
	}
	if len(failed) == 0 {
		failed = append(failed, "the probe exited "+strconv.FormatInt(code, 10)+": "+strings.TrimSpace(logs))
	}
	return fmt.Errorf("cluster %q: %w: %s; tried from a container on the cluster's network %s (%s). "+
		"The caches must listen on an address the nodes reach (docker0's, or every interface: cache.WithListenAll, `pullthrough up` without --loopback-only), "+
		"and the host's firewall must admit that network's bridge; on Docker Desktop, rootless Docker or a remote daemon the host is not reachable this way (see README)",
		name, ErrMirrorUnreachable, strings.Join(failed, "; "), name, req.Network.CIDRs[0])
}
