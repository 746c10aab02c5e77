package cache

import "github.com/pullthrough/pullthrough/internal/engine"

// Stats counts what one cache did since it started or since ResetStats;
// see the field docs of engine.Stats, which this is.
type Stats = engine.Stats

// EndpointStats counts what one endpoint of a cache served: a fleet tier or
// the origin.
type EndpointStats = engine.EndpointStats
