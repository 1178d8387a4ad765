//! Brindle as a route reflector.
