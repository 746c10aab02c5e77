package main

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pullthrough/pullthrough/cache"
	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// Labels on the detached container: managed marks it as this project's, so
// a container of the same name made by anyone else is never touched.
const (
	defaultContainerName = "pullthrough"

	labelManaged = "dev.pullthrough.managed"
	// labelRunDir is the record directory (cache.RunDir) of whoever made
	// the container: commands find the containers of their own user's
	// directory, as they find running sets (a test's own directory keeps
	// another test binary's containers out of its answers).
	labelRunDir  = "dev.pullthrough.run-dir"
	labelStorage = "dev.pullthrough.storage"
)

// detach runs `up` as a container of this project's own image, built from
// this very binary FROM scratch (nothing pulled), on the host's network, with
// the guide's restart policy, so the caches come back with the Docker daemon
// and after a reboot. Storage is the host directory, bound at the same path.
//
// With network, the container runs on that Docker network instead, at the
// subnet's last address (see cache.InNetworkAddr), admitting every client:
// it publishes no port, so only that network reaches it. A network that
// does not exist is made as Talos's docker provisioner makes a cluster's
// (its labels, --cidr), so `talosctl cluster create docker --name NETWORK
// --cidr CIDR` reuses it.
func detach(cmd *cobra.Command, name, root, netName, cidr string) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return fmt.Errorf("--detach runs the caches in a container: %w", err)
	}
	defer cli.Close()
	if existing, err := cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{}); err == nil {
		if existing.Container.Config == nil || existing.Container.Config.Labels[labelManaged] != "true" {
			return fmt.Errorf("a container named %q exists and was not made by pullthrough: it is left alone; remove or rename it, or pick another name with --name", name)
		}
		if existing.Container.State != nil && existing.Container.State.Running {
			return fmt.Errorf("pullthrough is already running detached as container %q (`pullthrough status` lists its caches; `pullthrough down%s` stops it)", name, nameFlag(name))
		}
		if _, err := cli.ContainerRemove(ctx, existing.Container.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			return fmt.Errorf("removing the stopped container %q: %w", name, err)
		}
	}
	bin, err := staticSelf()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(bin)
	tag := "pullthrough.local/pullthrough:" + hex.EncodeToString(sum[:6])
	// The image carries no managed label: a container someone else makes
	// from it must not pass for one of ours.
	if err := dockerenv.BuildBinaryImage(ctx, cli, bin, dockerenv.BuildOptions{Tag: tag, Binary: "pullthrough"}, nil); err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("creating storage %s: %w", root, err)
	}
	args := append([]string{"up", "--storage", root}, forwardedFlags(cmd)...)
	mode := container.NetworkMode("host")
	var netCfg *network.NetworkingConfig
	var addr netip.Addr
	if netName != "" {
		if addr, err = cache.InNetworkAddr(cidr); err != nil {
			return usagef("--cidr %q: %v", cidr, err)
		}
		if err := ensureClusterNetwork(ctx, cli, netName, cidr); err != nil {
			return err
		}
		mode = container.NetworkMode(netName)
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			netName: {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: addr}},
		}}
		args = append(args, "--open", "--bridge", addr.String())
	}
	created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:  tag,
			Cmd:    args,
			User:   fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid()), // storage stays the user's
			Labels: map[string]string{labelManaged: "true", labelStorage: root, labelRunDir: runDir()},
		},
		HostConfig: &container.HostConfig{
			NetworkMode:   mode,
			Binds:         []string{root + ":" + root},
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyAlways},
		},
		NetworkingConfig: netCfg,
	})
	if err != nil {
		return fmt.Errorf("creating container %q: %w", name, err)
	}
	if _, err := cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		_, _ = cli.ContainerRemove(ctx, created.ID, client.ContainerRemoveOptions{Force: true})
		return fmt.Errorf("starting container %q: %w", name, err)
	}
	// Show what it printed: the talosctl lines.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		logs, _ := dockerenv.ContainerLogs(ctx, cli, created.ID)
		if strings.Contains(logs, "# Talos config patches") {
			fmt.Fprint(out, logs)
			if netName != "" {
				fmt.Fprintf(out, "# the caches run on Docker network %q at %s; a cluster on that network: talosctl cluster create docker --name %s --cidr %s with the mirror lines above\n",
					netName, addr, netName, cidr)
			}
			fmt.Fprintf(out, "# running detached as container %q (restart: always); `pullthrough down%s` stops it, keeping %s (`pullthrough down%s --purge` also removes what it stored)\n",
				name, nameFlag(name), root, nameFlag(name))
			return nil
		}
		// Under restart: always, a container whose up fails is started again
		// at once: a restart counts as stopped.
		if info, err := cli.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{}); err == nil && info.Container.State != nil &&
			(!info.Container.State.Running || info.Container.State.Restarting || info.Container.RestartCount > 0) {
			return removeFailed(cli, created.ID, fmt.Errorf("container %q stopped: %s", name, strings.TrimSpace(logs)))
		}
		time.Sleep(100 * time.Millisecond)
	}
	logs, _ := dockerenv.ContainerLogs(ctx, cli, created.ID)
	return removeFailed(cli, created.ID, fmt.Errorf("container %q did not report its caches within 30s: %s", name, strings.TrimSpace(logs)))
}

// removeFailed removes a container whose caches did not start, so that
// restart: always does not retry them forever, and says so.
func removeFailed(cli *client.Client, id string, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, rmErr := cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true}); rmErr != nil {
		return fmt.Errorf("%w (removing it: %v)", err, rmErr)
	}
	return fmt.Errorf("%w (the container was removed)", err)
}

// forwardedFlags are the flags given to `up`, minus the ones detach handles.
func forwardedFlags(cmd *cobra.Command) []string {
	var out []string
	cmd.Flags().Visit(func(f *pflag.Flag) {
		switch f.Name {
		case "detach", "name", "storage", "network", "open", "bridge":
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+f.Name+"="+v)
			}
			return
		}
		out = append(out, "--"+f.Name+"="+f.Value.String())
	})
	return out
}

// staticSelf returns this executable if it is statically linked, which a
// FROM scratch image needs.
func staticSelf() ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, errors.New("this pullthrough binary is dynamically linked and cannot run in a FROM scratch image: " +
				"install it with CGO_ENABLED=0 go install github.com/pullthrough/pullthrough/cmd/pullthrough@latest")
		}
	}
	return os.ReadFile(exe)
}

func newDown() *cobra.Command {
	var name string
	var purge bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the detached caches (storage is kept; --purge drops it)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cli, err := dockerenv.Client(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			info, err := cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
			if err != nil {
				return fmt.Errorf("no container named %q: nothing runs detached under that name", name)
			}
			if info.Container.Config == nil || info.Container.Config.Labels[labelManaged] != "true" {
				return fmt.Errorf("container %q was not made by pullthrough: left alone", name)
			}
			root := info.Container.Config.Labels[labelStorage]
			if _, err := cli.ContainerRemove(ctx, info.Container.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
				return fmt.Errorf("removing container %q: %w", name, err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "stopped and removed container %q\n", name)
			if !purge {
				fmt.Fprintf(out, "storage kept in %s (`pullthrough purge%s` removes what the caches stored there)\n", root, storageFlag(root))
				return nil
			}
			if root == "" {
				return errors.New("the container did not record its storage directory: nothing purged")
			}
			return purgeRoot(cmd, root, false)
		},
	}
	cmd.Flags().StringVar(&name, "name", defaultContainerName, "name of the detached container")
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove what the caches stored (their content only; other files under the storage root are kept)")
	return cmd
}

// nameFlag is the --name a hint must carry to act on the container named.
func nameFlag(name string) string {
	if name == defaultContainerName {
		return ""
	}
	return " --name " + shellQuote(name)
}

// storageFlag is the --storage a hint must carry to act on root.
func storageFlag(root string) string {
	if def, err := cache.DefaultStorageRoot(); err == nil && filepath.Clean(def) == filepath.Clean(root) {
		return ""
	}
	return " --storage " + shellQuote(root)
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ensureClusterNetwork makes network as Talos's docker provisioner makes a
// cluster's, when no network of that name exists; one that does is used as
// it is (its subnet must hold cidr's last address).
func ensureClusterNetwork(ctx context.Context, cli *client.Client, name, cidr string) error {
	if _, err := cli.NetworkInspect(ctx, name, client.NetworkInspectOptions{}); err == nil {
		return nil
	}
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return usagef("--cidr %q: want a network such as 10.5.0.0/24", cidr)
	}
	_, err = cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{
		Labels: map[string]string{"talos.owned": "true", "talos.cluster.name": name},
		IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: prefix.Masked()}}},
	})
	if err != nil {
		return fmt.Errorf("creating Docker network %q (%s) for the caches: %w", name, cidr, err)
	}
	return nil
}
