//go:build tools

package deps

import (
	_ "github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/proxy"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/google/go-containerregistry/pkg/v1/random"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/google/go-containerregistry/pkg/crane"
	_ "github.com/moby/moby/client"
	_ "github.com/siderolabs/talos/pkg/provision"
	_ "github.com/siderolabs/talos/pkg/provision/providers"
	_ "github.com/siderolabs/talos/pkg/provision/providers/docker"
	_ "github.com/siderolabs/talos/pkg/provision/providers/qemu"
	_ "github.com/siderolabs/talos/pkg/images"
	_ "github.com/siderolabs/talos/pkg/cluster/check"
	_ "github.com/siderolabs/talos/pkg/provision/access"
	_ "github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops"
	_ "github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops/configmaker"
	_ "github.com/siderolabs/talos/pkg/machinery/config/configloader"
	_ "github.com/siderolabs/talos/pkg/machinery/config/generate"
	_ "github.com/stretchr/testify/require"
	_ "golang.org/x/sync/errgroup"
	_ "go.uber.org/goleak"
	_ "golang.org/x/time/rate"
)
