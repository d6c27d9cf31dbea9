package redisstore

import "github.com/redis/rueidis"

// Client returns the store's Redis connection, so other fleet-wide state
// (SLO counts) shares it instead of opening another pool. The store still
// owns it: Close closes it.
func (s *Store) Client() rueidis.Client { return s.client }
