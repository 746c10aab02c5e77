package provisioners

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// InNetwork runs the caches in one container of this project's own
// (FROM scratch, built here) on the cluster's own Docker network, for where
// nodes cannot reach this host: rootless Docker, Docker Desktop, a remote
// daemon, a host firewall. Nodes get the container's address on their
// network (the subnet's last address); the container is also on the
// daemon's default bridge, from where it reaches the upstreams and where
// this process reads its counters (CacheBox.Stats). Storage is a directory
// of this host bound into the container, so it outlives clusters.
type InNetwork struct {
	// Upstreams the caches stand in front of, reachable from a container
	// on the daemon's default bridge. Credentials are not passed in.
	Upstreams []cache.Upstream
	// StorageDir is bound into the container (default: in-network under
	// cache.DefaultStorageRoot).
	StorageDir string
	// Mode is the caches' (default cache.Online).
	Mode cache.Mode
}

// WithInNetworkCaches starts the caches in a container on the cluster's
// network (docker provisioner only) and gives nodes its address as their
// mirrors; WithSingleMirror makes that one "*" mirror. Not with WithCaches.
func WithInNetworkCaches(n InNetwork) Option { return func(o *settings) { o.inNet = &n } }

// cacheboxPackage is the program the container runs.
const cacheboxPackage = "github.com/pullthrough/pullthrough/internal/tools/cachebox"

const labelCacheBox = "pullthrough.cachebox"

// CacheBox is the running container of WithInNetworkCaches.
type CacheBox struct {
	ID      string
	Addr    netip.Addr // on the cluster's network: what nodes use
	Bridge  string     // on the daemon's default bridge: where this host reads it
	Ports   map[string]int
	Storage string
}

// inNetPlan fills the plan's mirrors for the in-network caches: the
// container gets the cluster subnet's last address, each upstream its Port
// (5000 on, in order, where none is given).
func inNetPlan(spec Spec, n *InNetwork, single bool) (addr netip.Addr, ports map[string]int, mirrors map[string]string, hosts []string, err error) {
	if spec.Provisioner != Docker {
		return addr, nil, nil, nil, fmt.Errorf("cluster %q: in-network caches need the docker provisioner", spec.Name)
	}
	if len(n.Upstreams) == 0 {
		return addr, nil, nil, nil, fmt.Errorf("cluster %q: in-network caches: no upstreams", spec.Name)
	}
	if addr, err = cache.InNetworkAddr(spec.CIDR); err != nil {
		return addr, nil, nil, nil, fmt.Errorf("cluster %q: %w", spec.Name, err)
	}
	ports, mirrors = map[string]int{}, map[string]string{}
	for i, u := range n.Upstreams {
		port := u.Port
		if port == 0 {
			port = 5000 + i
		}
		ports[u.Host] = port
		if !single {
			hosts = append(hosts, u.Host)
			mirrors[u.Host] = "http://" + net.JoinHostPort(addr.String(), strconv.Itoa(port))
		}
	}
	if single {
		hosts = []string{"*"}
		mirrors["*"] = "http://" + net.JoinHostPort(addr.String(), strconv.Itoa(ports[n.Upstreams[0].Host]))
	}
	return addr, ports, mirrors, hosts, nil
}

// startCacheBox starts the caches' container on the cluster's network
// (made here, as Talos makes it) and waits until it serves.
func startCacheBox(ctx context.Context, p *Plan, n *InNetwork, log io.Writer) (box *CacheBox, err error) {
	name := p.Spec.Name
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	if err := ensureNetwork(ctx, cli, p); err != nil {
		return nil, err
	}
	storage := n.StorageDir
	if storage == "" {
		root, err := cache.DefaultStorageRoot()
		if err != nil {
			return nil, err
		}
		storage = filepath.Join(root, "in-network")
	}
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, fmt.Errorf("cluster %q: in-network caches: creating storage %s: %w", name, storage, err)
	}
	tag, err := dockerenv.BuildToolImage(ctx, cli, cacheboxPackage, "pullthrough.local/cachebox", "cachebox", log)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: building the in-network caches: %w", name, err)
	}
	type up struct {
		Host string `json:"host"`
		URL  string `json:"url"`
		Port int    `json:"port"`
	}
	settings := struct {
		Upstreams []up   `json:"upstreams"`
		Mode      string `json:"mode"`
		Storage   string `json:"storage"`
	}{Mode: n.Mode.String(), Storage: "/data"}
	for _, u := range n.Upstreams {
		settings.Upstreams = append(settings.Upstreams, up{u.Host, u.URL, p.boxPorts[u.Host]})
	}
	env, err := json.Marshal(settings)
	if err != nil {
		return nil, err
	}
	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name + "-caches",
		Config: &container.Config{Image: tag, Env: []string{"PULLTHROUGH_CACHEBOX=" + string(env)},
			// The cluster's label: destroying the cluster (or its
			// leftovers) removes the container before the network.
			Labels: map[string]string{labelCluster: name, labelCacheBox: "true"}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(name), Binds: []string{storage + ":/data"}},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			name: {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: p.boxAddr}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %q: creating the in-network caches: %w", name, err)
	}
	defer func() {
		if err != nil {
			_, _ = cli.ContainerRemove(context.WithoutCancel(ctx), created.ID, client.ContainerRemoveOptions{Force: true})
		}
	}()
	if _, err := cli.NetworkConnect(ctx, "bridge", client.NetworkConnectOptions{Container: created.ID}); err != nil {
		return nil, fmt.Errorf("cluster %q: attaching the in-network caches to the default bridge: %w", name, err)
	}
	if _, err := cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return nil, fmt.Errorf("cluster %q: starting the in-network caches: %w", name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		logs, _ := dockerenv.ContainerLogs(ctx, cli, created.ID)
		if strings.Contains(logs, "cachebox ready") {
			break
		}
		info, err := cli.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{})
		if err == nil && info.Container.State != nil && !info.Container.State.Running {
			return nil, fmt.Errorf("cluster %q: the in-network caches stopped: %s", name, strings.TrimSpace(logs))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("cluster %q: the in-network caches did not start within a minute: %s", name, strings.TrimSpace(logs))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	info, err := cli.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("cluster %q: inspecting the in-network caches: %w", name, err)
	}
	box = &CacheBox{ID: created.ID, Addr: p.boxAddr, Ports: p.boxPorts, Storage: storage}
	if ep := info.Container.NetworkSettings.Networks["bridge"]; ep != nil {
		box.Bridge = ep.IPAddress.String()
	}
	fmt.Fprintf(log, "in-network caches at %s on the cluster's network (%s on the default bridge), storage %s\n", box.Addr, box.Bridge, storage)
	return box, nil
}

// Stats reads each cache's counters from the container, by registry host.
func (b *CacheBox) Stats(ctx context.Context) (map[string]cache.Stats, error) {
	if b.Bridge == "" {
		return nil, errors.New("the in-network caches have no address on the default bridge to read counters from")
	}
	out := map[string]cache.Stats{}
	hc := &http.Client{Timeout: 5 * time.Second}
	for host, port := range b.Ports {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(b.Bridge, strconv.Itoa(port))+cache.StatsPath, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("reading the counters of the in-network cache for %s: %w", host, err)
		}
		var s cache.Stats
		err = json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the counters of the in-network cache for %s: %w", host, err)
		}
		out[host] = s
	}
	return out, nil
}
