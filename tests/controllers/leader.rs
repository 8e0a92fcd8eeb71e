//! Leader election: two controller-managers, one acts; killing it hands over.
