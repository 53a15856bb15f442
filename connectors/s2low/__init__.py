"""S²LOW-style tiers de télétransmission: the account settings shared by its flows."""
