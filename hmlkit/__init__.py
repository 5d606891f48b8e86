"""Small shared pieces below runners, components and policies: they import none of them."""
