// Package provisioners creates Talos clusters from Go with Talos's own docker
// and qemu provisioners, their registry mirrors pointed at a cachetest set.
//
// It is talosctl cluster create as a library call: the request and machine
// configs come from talosctl's clusterops and configmaker, exactly as the
// command builds them, with --registry-mirror values made from the cache set
// and the address nodes reach the host on (docker0's address for the docker
// provisioner, the cluster network's gateway for qemu). Create returns once
// the provisioner is done, Wait blocks until a Readiness check passes, and
// Destroy removes containers or VMs, the network and the state directory.
//
//	set := cachetest.Get(t)
//	c := provisioners.New(t, provisioners.Spec{Name: "e2e", ControlPlanes: 1, Workers: 1},
//		provisioners.WithCaches(set))
//	if err := c.Wait(ctx); err != nil { … }
//	t.Log(c.Timings())
//
// With a real Talos image (PULLTHROUGH_TALOS_IMAGE=ghcr.io/siderolabs/talos:v1.13.0
// or Spec.Image), readiness is talosctl's own post-create: bootstrap etcd, then
// check.Wait with check.DefaultClusterChecks. This package knows nothing of
// stand-ins: with package fixtures' stand-in node, which only pulls what a
// node pulls at boot, pass WithReadiness(fixtures.StandinReady()), whose
// Summaries then say what each node pulled. Readiness checks compose with
// AllOf, as Talos's conditions do.
//
// The qemu provisioner boots real Talos from Spec.Qemu's vmlinuz and
// initramfs.xz, which needs KVM. Without them, StandinQemu gives the stand-in
// Talos VM that scripts/qemu-up builds (Debian's cloud kernel, an initramfs
// whose /init is the stand-in node: DHCP on Talos's bridge, talos.config from
// the launcher, pulls through the mirrors, summary on the serial console),
// and fixtures.StandinReady reads that summary from the VM's console log. Test binaries serve
// as talosctl's helpers through LaunchQemuIfAsked in TestMain; where /dev/kvm
// opens but KVM does not run a probe guest, the VM launcher hides /dev/kvm in
// a private mount namespace and QEMU runs under software emulation.
//
// Everything this package and Talos's provisioners say goes to the
// WithLogger logger, one record a line; nothing is written to stderr. Two
// places in Talos print there on their own, and both are avoided: its config
// bundle prints "generating PKI and tokens" unless told not to, which the
// provisioner handed to configmaker does; its docker Destroy prints
// "destroying network …", so docker clusters are removed by their labels. One
// remains, outside this process's normal path: Talos's qemu preflight prints
// "running without KVM" to stdout on a machine where /dev/kvm does not open.
package provisioners
