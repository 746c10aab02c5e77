package provisioners

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/moby/client"
	"github.com/siderolabs/talos/pkg/provision"

	"github.com/pullthrough/pullthrough/internal/dockerenv"
)

// Labels Talos's docker provisioner puts on what it creates.
const (
	labelOwned   = "talos.owned"
	labelCluster = "talos.cluster.name"
)

// localImagePrefix names images this project builds locally.
const localImagePrefix = "pullthrough.local/"

var errNotBuilt = errors.New("image not built")

// destroyDocker removes a docker cluster by its labels: its containers, its
// network and its state. It is Talos's docker Destroy without the line that
// Destroy prints straight to stderr.
func destroyDocker(ctx context.Context, p *Plan) error {
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := dockerenv.RemoveContainersByLabel(ctx, cli, labelCluster, p.Spec.Name); err != nil {
		return fmt.Errorf("removing the containers of cluster %q: %w", p.Spec.Name, err)
	}
	if err := dockerenv.RemoveNetworksByLabel(ctx, cli, labelCluster, p.Spec.Name); err != nil {
		return fmt.Errorf("removing the network of cluster %q: %w", p.Spec.Name, err)
	}
	return nil
}

func preflight(ctx context.Context, spec Spec) error {
	if spec.Provisioner == Qemu {
		return QemuPreflight(spec)
	}
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return fmt.Errorf("docker provisioner: %w", err)
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, spec.Image); err != nil {
		if strings.HasPrefix(spec.Image, localImagePrefix) {
			// This project's images are built, never pulled: not a skip.
			return fmt.Errorf("%w: node image %q is not on the daemon (build it first, e.g. fixtures.NewStandinImage)", errNotBuilt, spec.Image)
		}
		// A real image missing here is pulled by the provisioner, as with
		// talosctl; only say what will happen.
	}
	return nil
}

// removeLeftovers removes what a crashed earlier run with the same cluster
// name left: for qemu, the provisioner's own Destroy when its state survived
// (VM processes, CNI); for docker, the containers and network that still
// carry the cluster's labels (Talos's docker Destroy prints to stderr).
func removeLeftovers(ctx context.Context, p *Plan, log io.Writer) error {
	spec := p.Spec
	state := filepath.Join(spec.StateDir, spec.Name)
	if _, err := os.Stat(state); err == nil {
		if spec.Provisioner == Docker {
			fmt.Fprintf(log, "removing the state %s of cluster %q left by an earlier run\n", state, spec.Name)
		} else if old, err := p.prov.Reflect(ctx, spec.Name, spec.StateDir); err == nil {
			fmt.Fprintf(log, "removing cluster %q left by an earlier run (state in %s)\n", spec.Name, state)
			if err := p.prov.Destroy(ctx, old, provision.WithLogWriter(log)); err != nil {
				fmt.Fprintf(log, "destroying the earlier cluster %q: %v; removing what is left by label\n", spec.Name, err)
			}
		}
		if err := os.RemoveAll(state); err != nil {
			return fmt.Errorf("removing the state %s of an earlier cluster %q: %w", state, spec.Name, err)
		}
	}
	if spec.Provisioner != Docker {
		return nil
	}
	cli, err := dockerenv.Client(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	list, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", labelCluster+"="+spec.Name)})
	if err != nil {
		return fmt.Errorf("listing containers of cluster %q: %w", spec.Name, err)
	}
	if len(list.Items) > 0 {
		fmt.Fprintf(log, "removing %d containers of cluster %q left by an earlier run\n", len(list.Items), spec.Name)
		if err := dockerenv.RemoveContainersByLabel(ctx, cli, labelCluster, spec.Name); err != nil {
			return fmt.Errorf("removing containers of an earlier cluster %q: %w", spec.Name, err)
		}
	}
	// By label, not by name: a network that merely shares the name (or
	// whose ID starts with it) is not ours to remove.
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", labelCluster+"="+spec.Name)})
	if err != nil {
		return fmt.Errorf("listing networks of cluster %q: %w", spec.Name, err)
	}
	if len(nets.Items) > 0 {
		fmt.Fprintf(log, "removing network %q left by an earlier run\n", spec.Name)
		if err := dockerenv.RemoveNetworksByLabel(ctx, cli, labelCluster, spec.Name); err != nil {
			return fmt.Errorf("removing network %q of an earlier cluster: %w", spec.Name, err)
		}
	}
	return nil
}
