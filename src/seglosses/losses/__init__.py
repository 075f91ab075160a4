"""Loss families: one file each, every loss a pure function and its module side by side."""
