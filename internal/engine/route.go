package engine

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

type kind int

const (
	kindOther kind = iota
	kindBase       // /v2/
	kindManifest
	kindBlob
	kindTags      // /v2/<name>/tags/list
	kindReferrers // /v2/<name>/referrers/<digest>
)

// route is a parsed registry API path: /v2/, /v2/<name>/manifests/<ref> or
// /v2/<name>/blobs/<digest>. Names may contain slashes.
type route struct {
	kind kind
	name string
	ref  string // tag or digest for manifests, digest for blobs
}

func parseRoute(path string) route {
	if path == "/v2/" || path == "/v2" {
		return route{kind: kindBase}
	}
	p, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{}
	}
	if name, ok := strings.CutSuffix(p, "/tags/list"); ok && name != "" {
		return route{kind: kindTags, name: name}
	}
	for _, k := range []struct {
		sep  string
		kind kind
	}{{"/manifests/", kindManifest}, {"/blobs/", kindBlob}, {"/referrers/", kindReferrers}} {
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

// The grammar of the distribution spec: path components of lower-case
// letters and digits joined by separators, a name of at most 255
// characters, tags of at most 128 word characters, dots and dashes.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

const maxNameLen = 255

// check validates a manifest or blob route and returns the registry error
// code and message for a bad one. Names and tags that pass are safe as path
// components of storage: no component starts with a dot or an underscore.
func (r route) check() (code, msg string, ok bool) {
	if len(r.name) > maxNameLen || !nameRE.MatchString(r.name) {
		n := r.name
		if len(n) > 80 {
			n = n[:80] + "…"
		}
		return "NAME_INVALID", fmt.Sprintf("repository name %q: want at most %d characters of lower-case path components (the distribution spec's grammar)", n, maxNameLen), false
	}
	if r.kind == kindTags {
		return "", "", true
	}
	looksDigest := strings.Contains(r.ref, ":")
	if r.kind == kindBlob || r.kind == kindReferrers || looksDigest {
		d, err := digest.Parse(r.ref)
		if err != nil || d.Algorithm() != digest.SHA256 {
			return "DIGEST_INVALID", fmt.Sprintf("digest %q: want sha256:<64 hex digits>", trunc(r.ref)), false
		}
		return "", "", true
	}
	if !tagRE.MatchString(r.ref) {
		return "MANIFEST_INVALID", fmt.Sprintf("tag %q: want at most 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", trunc(r.ref)), false
	}
	return "", "", true
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// isDigest tells a manifest reference by digest from one by tag.
func (r route) isDigest() bool { return strings.Contains(r.ref, ":") }

func (r route) String() string {
	if r.isDigest() {
		return r.name + "@" + r.ref
	}
	return r.name + ":" + r.ref
}
