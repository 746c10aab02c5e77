package cache

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A port clash with another cache for the same registry says in words how
// that cache differs, not by identity hashes.
func TestIdentityDiffSaysHowAnotherCacheDiffers(t *testing.T) {
	url1, url2 := Identity("https://a.example", Online), Identity("https://b.example", Online)
	strict := Identity("https://a.example", Strict)
	assert.Equal(t, "that fetches from another upstream URL", identityDiff(url2, url1))
	assert.Equal(t, "that runs in strict mode (this one: online)", identityDiff(strict, url1))
	assert.Equal(t, "that fetches from another upstream URL and runs in strict mode (this one: online)",
		identityDiff(Identity("https://b.example", Strict), url1))
	assert.NotContains(t, identityDiff(url2, url1), url1[:6])
}
