package dockerenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// ContainerLogs returns everything the container has written so far, stdout
// and stderr together in the order the daemon kept them.
func ContainerLogs(ctx context.Context, cli *client.Client, id string) (string, error) {
	// Without a TTY the daemon multiplexes both streams behind 8-byte frame
	// headers; with one it sends the raw bytes. Read which applies.
	info, err := cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return "", fmt.Errorf("reading logs of container %s: %w", id, err)
	}
	tty := info.Container.Config != nil && info.Container.Config.Tty

	rc, err := cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "", fmt.Errorf("reading logs of container %s: %w", id, err)
	}
	defer rc.Close()

	var out bytes.Buffer
	if tty {
		_, err = io.Copy(&out, rc)
	} else {
		_, err = stdcopy.StdCopy(&out, &out, rc)
	}
	if err != nil {
		return out.String(), fmt.Errorf("reading logs of container %s: %w", id, err)
	}
	return out.String(), nil
}

// WaitExit waits until a started container stops and returns its exit
// code. Call it after ContainerStart: a container that was only created is
// already "not running" and returns at once.
func WaitExit(ctx context.Context, cli *client.Client, id string) (int64, error) {
	res := cli.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case r := <-res.Result:
		if r.Error != nil && r.Error.Message != "" {
			return r.StatusCode, fmt.Errorf("waiting for container %s: %s", id, r.Error.Message)
		}
		return r.StatusCode, nil
	case err := <-res.Error:
		return -1, fmt.Errorf("waiting for container %s: %w", id, err)
	case <-ctx.Done():
		return -1, fmt.Errorf("waiting for container %s: %w", id, ctx.Err())
	}
}

// RemoveContainersByLabel force-removes every container, running or not,
// that carries the label key=value (any value when value is empty), with
// its anonymous volumes. Containers that vanish meanwhile are not an error.
func RemoveContainersByLabel(ctx context.Context, cli *client.Client, key, value string) error {
	list, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: labelFilter(key, value)})
	if err != nil {
		return fmt.Errorf("listing containers labelled %s: %w", labelString(key, value), err)
	}
	var errs []error
	for _, c := range list.Items {
		_, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing container %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveNetworksByLabel removes every network that carries the label
// key=value (any value when value is empty). Remove the networks'
// containers first: the daemon refuses a network that is in use.
func RemoveNetworksByLabel(ctx context.Context, cli *client.Client, key, value string) error {
	list, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: labelFilter(key, value)})
	if err != nil {
		return fmt.Errorf("listing networks labelled %s: %w", labelString(key, value), err)
	}
	var errs []error
	for _, n := range list.Items {
		_, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing network %s (%s): %w", n.Name, n.ID, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveImage removes the image by reference, untagging it; an image that is
// already gone is not an error, so cleanups may race.
func RemoveImage(ctx context.Context, cli *client.Client, ref string) error {
	_, err := cli.ImageRemove(ctx, ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing image %s: %w", ref, err)
	}
	return nil
}

func labelFilter(key, value string) client.Filters {
	return make(client.Filters).Add("label", labelString(key, value))
}

func labelString(key, value string) string {
	if value == "" {
		return key
	}
	return key + "=" + value
}
