"""Pure verification logic: the policy table, deadlines, link tokens and the data comparison."""
