"""Entities: the keys features are looked up by. Values are recstack's external ids (strings)."""

from feast import Entity, ValueType

# A person who receives recommendations; join key = the external user id.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="External user id")

# Anything that can be recommended (movie, product, track, article); join key = the external item id.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="External item id")
