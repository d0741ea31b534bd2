package store

import "context"

// Leadership is implemented by stores that several servers share: it
// elects one of them for a role only one may hold at a time (the one
// connection to an external MQTT broker, say). The election is the store's
// own (etcd's), never one of ours.
type Leadership interface {
	// Lead blocks until the caller, named by id, holds role or ctx ends.
	// It returns a context that ends when the role is lost (the store
	// stopped hearing from this server, or ctx ended) and a function that
	// gives the role up; call it when done.
	Lead(ctx context.Context, role, id string) (held context.Context, resign func(), err error)
}
