// Package standin is the engine of the stand-in Talos node: the part of a
// node's boot that matters to a registry cache, and nothing else.
//
// A real Talos node in Talos's docker provisioner reads its machine config
// from the USERDATA environment variable, and its containerd then pulls the
// images of pkg/images List(config) through the registry mirrors the config
// names. Load does the first half with Talos's own configloader and images
// packages; Run does the second the way containerd's resolver and fetcher do
// it through a mirror: HEAD of the manifest by tag with ?ns=<registry>, GET
// of the manifest by digest (and of the platform's manifest when the tag is
// an index), then GET of the config and every layer, each digest verified
// while the body streams by. Main wires both to a process: it is what the
// talos-standin binary runs.
//
// Where this departs from containerd, on purpose:
//   - Nothing is stored: bodies are hashed and discarded, so the node works
//     on a read-only root file system and a second boot pulls everything
//     again, as a node with an empty disk would.
//   - When every mirror endpoint of a registry fails, the pull fails; it does
//     not fall back to the registry itself. A fallback would hide a broken
//     cache behind a slow success, which is the one thing the tests built on
//     this must see. A registry with no mirror at all is tried directly, with
//     a short bounded timeout, and reported as a failure when that fails.
//   - Layers of one image are fetched one after the other; a few images are
//     pulled at a time (Options.Parallel).
//
// The package prints nothing itself: progress goes to Options.Log, and the
// summary is written by WriteSummary to a writer the caller names.
package standin
