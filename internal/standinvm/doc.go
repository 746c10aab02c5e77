// Package standinvm is the stand-in Talos VM: the /init of an initramfs that
// boots under Talos's own qemu provisioner and does what a Talos node does at
// boot that matters to a registry cache, with the engine of the container
// stand-in (internal/standin).
//
// A real Talos node on Talos's qemu bridge gets its address by DHCP from the
// launcher's dhcpd, reads talos.config=<url> from the kernel command line,
// fetches its machine config from the launcher's HTTP server and lets
// containerd pull images.List(config) through the configured mirrors. Boot
// does the same, in this order, with the Debian kernel's virtio modules the
// initramfs carries, and writes standin's summary line to the serial
// console, where the provisioner's readiness reads it (as the container
// stand-in's is read from its container logs). Then it stays up until the
// VM is stopped: PID 1 must never return.
//
// What it does not do, on purpose: no disk, no install, no apid, no etcd, no
// kubelet; no DHCP renewal (the address stays on the link for the VM's life,
// which is a test's length, well past talosctl's 5 minute lease only in
// long benchmarks, where no one else can take it: the launcher's IPAM holds
// one address per MAC).
//
// Boot prints only to the console writer it is given.
package standinvm
