package cache

import (
	"strings"

	"github.com/opencontainers/go-digest"
)

type kind int

const (
	kindOther kind = iota
	kindManifest
	kindBlob
)

// route is a parsed registry API path: /v2/<name>/manifests/<ref> or
// /v2/<name>/blobs/<digest>. Names may contain slashes.
type route struct {
	kind kind
	name string
	ref  string // tag or digest for manifests, digest for blobs
}

func parseRoute(path string) route {
	p, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{}
	}
	for _, k := range []struct {
		sep  string
		kind kind
	}{{"/manifests/", kindManifest}, {"/blobs/", kindBlob}} {
		i := strings.LastIndex(p, k.sep)
		if i <= 0 {
			continue
		}
		name, ref := p[:i], p[i+len(k.sep):]
		if ref == "" || strings.Contains(ref, "/") {
			continue
		}
		if k.kind == kindBlob && ref == "uploads" {
			continue
		}
		return route{kind: k.kind, name: name, ref: ref}
	}
	return route{}
}

// isDigest tells a manifest reference by digest from one by tag.
func (r route) isDigest() bool {
	_, err := digest.Parse(r.ref)
	return err == nil
}

func (r route) String() string {
	if r.isDigest() {
		return r.name + "@" + r.ref
	}
	return r.name + ":" + r.ref
}
